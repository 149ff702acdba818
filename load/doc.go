// Package load generates Spiral's traffic against a service under test:
// named load profiles (Background, the everyday client; InternalBatch, the
// postmortem's batch client), each a seeded, bounded Load that records
// every request; a Flood, a Load as a fault (faults.Fault) injected and
// recovered with the others; and an Abort that stops the floods once the
// everyday traffic's error rate or latency passes set limits, as k6's
// thresholds with abortOnFail do.
//
// Every load is bounded in rate, requests in flight, count and time, aims
// at the URL it is given (loopback in Spiral's runs) and stops by itself.
package load
