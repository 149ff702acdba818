package report

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

// A budget's line covers its phases in every arm: the union of the arms'
// spans, overlapping and touching ones joined.
func TestUnionSpans(t *testing.T) {
	fixed := []span{{Name: "inject", Start: 0, End: 4}, {Name: "recover", Start: 6, End: 9}}
	incident := []span{{Name: "inject", Start: 0, End: 4}, {Name: "recover", Start: 6, End: 13.8}}
	assert.Equal(t, []span{{Name: "inject", Start: 0, End: 4}, {Name: "recover", Start: 6, End: 13.8}}, unionSpans(fixed, incident))
	assert.Equal(t, []span{{Name: "a", Start: 0, End: 5}}, unionSpans([]span{{Name: "a", Start: 0, End: 2}}, []span{{Name: "b", Start: 2, End: 5}}), "touching spans join")
	assert.Equal(t, incident, unionSpans(nil, incident))
	assert.Nil(t, unionSpans(nil, nil))
}
