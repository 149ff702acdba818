package dataplane_test

import (
	"reflect"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spiral-chaos/spiral/dataplane"
)

// Every field where the fixed and the incident configurations differ is a
// knob, and each knob turns back exactly its own field.
func TestKnobsCoverEveryDifference(t *testing.T) {
	fixed, incident := dataplane.DefaultConfig(), dataplane.IncidentConfig()
	fv, iv := reflect.ValueOf(fixed), reflect.ValueOf(incident)
	var differ []string
	for i := range fv.NumField() {
		if !reflect.DeepEqual(fv.Field(i).Interface(), iv.Field(i).Interface()) {
			differ = append(differ, fv.Type().Field(i).Name)
		}
	}
	var fields []string
	for _, k := range dataplane.Knobs {
		fields = append(fields, k.Field)
		got, err := dataplane.Ablate(fixed, k.Name)
		require.NoError(t, err)
		gv := reflect.ValueOf(got)
		for i := range gv.NumField() {
			name := gv.Type().Field(i).Name
			want := fv.Field(i).Interface()
			if name == k.Field {
				want = iv.Field(i).Interface()
			}
			assert.True(t, reflect.DeepEqual(want, gv.Field(i).Interface()), "knob %s: field %s is %v, want %v", k.Name, name, gv.Field(i).Interface(), want)
		}
		require.NoError(t, got.Validate(), "knob %s: the ablated configuration is valid", k.Name)
	}
	assert.Equal(t, differ, fields, "the knobs are the fields where DefaultConfig and IncidentConfig differ, in order")

	_, err := dataplane.Ablate(fixed, "turbo")
	require.ErrorContains(t, err, `no knob "turbo": want one of batch-concurrency, lookup,`)
}
