// Package netfault holds Spiral's network faults: source-port budgets that
// confine a dialer's ephemeral ports (PortBudget, PortBudgetFault on a
// DialHook) or a network namespace's whole range (NetnsPortBudget), and
// toxics on an in-process TCP proxy (Proxy, Toxic: latency, resets and
// bandwidth). Each fault satisfies faults.Fault and aims at
// loopback only.
//
// netfault never imports testing: faults take a context and return errors;
// only suites and _test.go files fail tests.
package netfault
