package dataplane

import (
	"fmt"
	"strings"
)

// Knob is one defence of the fixed configuration: a field where
// DefaultConfig differs from IncidentConfig. Ablate turns it back to the
// incident's value, everything else kept fixed, to show what that one
// defence holds.
type Knob struct {
	// Name is the knob's name in flags and reports: "batch-concurrency".
	Name string
	// Field is the Config field it sets.
	Field string
	// Doc says what the defence is.
	Doc string
	set func(dst *Config, from Config)
}

// Knobs are the fixed configuration's defences, in Config's field order.
// TestKnobsCoverEveryDifference checks they are every field where
// DefaultConfig and IncidentConfig differ.
var Knobs = []Knob{
	{"batch-concurrency", "BatchConcurrency", "each batch's lookups bounded (errgroup.SetLimit), the postmortem's fix", func(d *Config, f Config) { d.BatchConcurrency = f.BatchConcurrency }},
	{"lookup", "Lookup", "chunked GetMulti instead of one Get per key", func(d *Config, f Config) { d.Lookup = f.Lookup }},
	{"memcache-concurrency", "MemcacheConcurrency", "memcached operations bounded below the idle pool", func(d *Config, f Config) { d.MemcacheConcurrency = f.MemcacheConcurrency }},
	{"on-cache-error", "OnCacheError", "fall back to the store when memcached fails", func(d *Config, f Config) { d.OnCacheError = f.OnCacheError }},
	{"store-concurrency", "StoreConcurrency", "CQL queries bounded", func(d *Config, f Config) { d.StoreConcurrency = f.StoreConcurrency }},
	{"max-batch", "MaxBatch", "batches over the limit rejected", func(d *Config, f Config) { d.MaxBatch = f.MaxBatch }},
	{"max-body-bytes", "MaxBodyBytes", "request bodies over the limit rejected", func(d *Config, f Config) { d.MaxBodyBytes = f.MaxBodyBytes }},
	{"deadline", "Deadline", "a deadline on every request", func(d *Config, f Config) { d.Deadline = f.Deadline }},
	{"log-policy", "LogPolicy", "error lines rate-limited", func(d *Config, f Config) { d.LogPolicy = f.LogPolicy }},
}

// KnobNames lists Knobs' names.
func KnobNames() []string {
	names := make([]string, len(Knobs))
	for i, k := range Knobs {
		names[i] = k.Name
	}
	return names
}

// Ablate returns cfg with the named knob turned back to IncidentConfig's
// value. An unknown name is an error naming the knobs there are.
func Ablate(cfg Config, name string) (Config, error) {
	for _, k := range Knobs {
		if k.Name == name {
			k.set(&cfg, IncidentConfig())
			return cfg, nil
		}
	}
	return cfg, fmt.Errorf("no knob %q: want one of %s", name, strings.Join(KnobNames(), ", "))
}
