//go:build !linux

package proc

// Spiral runs on Linux only: its children run in memory cgroups and are
// started with Linux-only process attributes (UseCgroupFD). Elsewhere the
// build stops here with this identifier in the error.
var _ = Spiral_runs_on_Linux_only__see_README
