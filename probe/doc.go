// Package probe watches a process and its host the way the outage Spiral
// replays (README, "Where it comes from") needed: TCP sockets by state and
// port from the kernel, ephemeral port headroom, goroutines, live OS threads,
// open fds, RSS, heap and GC.
//
// A [Census] counts sockets from netlink sock_diag with the state and port
// filters applied in the kernel, or from /proc/net/tcp{,6} where netlink is
// refused. [ReadProcess] and [RuntimeReader] read process and Go runtime
// figures. A [Sampler] reads a list of named [Source] values at a fixed
// interval into a [Timeline] with phase marks; [Timeline.Check] judges the
// timeline against [Budget] high-water marks and reports every violation. A
// [Peak] is a Source that polls a cheap reading at a short interval in a
// goroutine of its own and reports, at each sample, the highest value since
// the one before: bursts that begin and end between two samples.
//
// The package never imports testing: it takes a context and returns values and
// errors, so scenarios and suites decide what fails.
//
// Typical use in a scenario:
//
//	census := probe.Census{}
//	s, err := probe.NewSampler(100*time.Millisecond,
//		probe.NewProcessSource(0),
//		probe.NewRuntimeSource(),
//		probe.NewSocketSource("timewait_memcached", census,
//			probe.Filter{RemotePort: 11211, States: []probe.State{probe.TimeWait}}),
//	)
//	// run s.Run(ctx) in an errgroup, call s.Mark("inject") between phases, then
//	vs := s.Timeline().Check(probe.Limit("timewait_memcached", 200, "inject"))
//	if err := vs.Err(); err != nil { ... }
package probe
