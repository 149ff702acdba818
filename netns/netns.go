// Package netns makes network namespaces of a test's own: a fresh loopback
// and TCP stack (its own ephemeral port range, TIME_WAIT sockets and
// sysctls) for a service under test run as a child process, without
// touching the machine's. Sockets are made inside a namespace by a thread
// that lives there (NS.Do, Listen, DialContext); once made they are used
// from anywhere. Forwarders join a namespace to the machine's loopback.
//
// Making a namespace needs CAP_SYS_ADMIN (root here). A namespace lives
// until Close and until the last process in it (a child started by Do)
// exits.
//
//	ns, err := netns.New()
//	...
//	defer ns.Close()
//	err = ns.SetSysctl("net/ipv4/ip_local_port_range", "40000 41999")
//	ln, err := ns.Listen("tcp", "127.0.0.1:11211") // inside
package netns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// NS is a network namespace, with its loopback up, held by one OS thread
// that never leaves it. Its methods are safe for concurrent use; the
// functions they run inside it run one at a time.
type NS struct {
	calls chan func()
	done  chan struct{}
	path  string // /proc/PID/task/TID/ns/net of the holding thread

	closeOnce sync.Once
}

// New makes a namespace: a locked OS thread unshares its network
// namespace, brings its loopback up and stays there, running NS.Do's
// functions, until Close.
func New() (*NS, error) {
	ns, err := hold(func() error {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("unshare the network namespace: %w", err)
		}
		return loopbackUp()
	})
	if err != nil {
		return nil, fmt.Errorf("new network namespace: %w", err)
	}
	return ns, nil
}

// Join holds the existing namespace that path names (/proc/PID/ns/net of
// a process in it, a container's among them): a locked OS thread enters it
// and stays there, as New's does. Close lets the thread go; the namespace
// lives on as long as its processes do.
func Join(path string) (*NS, error) {
	ns, err := hold(func() error {
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open %s: %w", path, err)
		}
		defer func() { _ = unix.Close(fd) }()
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("enter %s: %w", path, err)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("join network namespace: %w", err)
	}
	return ns, nil
}

// hold starts the thread that holds a namespace: enter moves it in.
func hold(enter func() error) (*NS, error) {
	ns := &NS{calls: make(chan func()), done: make(chan struct{})}
	ready := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if unix.Gettid() != unix.Getpid() {
			ns.serve(enter, ready)
			return
		}
		// The main thread: /proc/self/net shows its namespace, and so every
		// census of the process's own sockets would read the new one. It
		// is held here, locked, while a thread that can't be it enters.
		inner := make(chan error, 1)
		go func() {
			runtime.LockOSThread()
			ns.serve(enter, inner)
		}()
		err := <-inner
		runtime.UnlockOSThread()
		ready <- err
	}()
	if err := <-ready; err != nil {
		return nil, err
	}
	return ns, nil
}

// serve moves the calling goroutine's locked thread into a namespace
// (enter), reports on ready and runs Do's functions until Close. The
// thread is never unlocked: it ends with the goroutine instead of
// returning to the runtime's pool inside the namespace.
func (ns *NS) serve(enter func() error, ready chan<- error) {
	if err := enter(); err != nil {
		ready <- err
		return
	}
	ns.path = fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid())
	ready <- nil
	for {
		select {
		case fn := <-ns.calls:
			fn()
		case <-ns.done:
			return
		}
	}
}

// loopbackUp sets lo up in the calling thread's network namespace.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("loopback up: %w", err)
	}
	defer func() { _ = unix.Close(fd) }()
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return fmt.Errorf("loopback up: %w", err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("loopback up: get flags: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("loopback up: set flags: %w", err)
	}
	return nil
}

// ErrClosed is returned by an NS's methods after Close.
var ErrClosed = errors.New("network namespace closed")

// Do runs fn on the namespace's thread and returns its error: sockets fn
// makes, and processes it starts (exec.Cmd.Start forks from the calling
// thread), are inside the namespace. fn must not keep the thread: it runs
// one call at a time.
func (ns *NS) Do(fn func() error) error {
	errc := make(chan error, 1)
	select {
	case ns.calls <- func() { errc <- fn() }:
		return <-errc
	case <-ns.done:
		return ErrClosed
	}
}

// Path is a file naming the namespace (/proc/PID/task/TID/ns/net), for
// tools that enter one by path (nsenter --net=PATH); valid until Close.
func (ns *NS) Path() string { return ns.path }

// Listen is net.Listen inside the namespace.
func (ns *NS) Listen(network, address string) (net.Listener, error) {
	var ln net.Listener
	err := ns.Do(func() (err error) {
		ln, err = net.Listen(network, address)
		return err
	})
	return ln, err
}

// DialContext is net.Dialer.DialContext inside the namespace. Dials are
// made one at a time, each a loopback handshake of tens of microseconds.
func (ns *NS) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	var c net.Conn
	err := ns.Do(func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, address)
		return err
	})
	return c, err
}

// Sysctl reads a network sysctl of the namespace, named as under
// /proc/sys ("net/ipv4/ip_local_port_range").
func (ns *NS) Sysctl(name string) (string, error) {
	path, err := sysctlPath(name)
	if err != nil {
		return "", err
	}
	var v string
	err = ns.Do(func() error {
		b, err := os.ReadFile(path)
		v = strings.TrimSpace(string(b))
		return err
	})
	if err != nil {
		return "", fmt.Errorf("sysctl %s: %w", name, err)
	}
	return v, nil
}

// SetSysctl writes a network sysctl of the namespace: it changes nothing
// outside it.
func (ns *NS) SetSysctl(name, value string) error {
	path, err := sysctlPath(name)
	if err != nil {
		return err
	}
	err = ns.Do(func() error { return os.WriteFile(path, []byte(value), 0) })
	if err != nil {
		return fmt.Errorf("sysctl %s=%q: %w", name, value, err)
	}
	return nil
}

// sysctlPath is /proc/sys/NAME for a network sysctl, which the kernel
// resolves in the network namespace of the thread that opens it.
func sysctlPath(name string) (string, error) {
	clean := filepath.Clean("/" + name)[1:]
	if !strings.HasPrefix(clean, "net/") || clean != name {
		return "", fmt.Errorf("sysctl %q: want a network sysctl such as net/ipv4/ip_local_port_range", name)
	}
	return "/proc/sys/" + clean, nil
}

// Close lets the namespace's thread exit; the namespace goes once no
// process is left in it and no socket made in it is open. Calls after it
// return ErrClosed. It is safe to call more than once.
func (ns *NS) Close() error {
	ns.closeOnce.Do(func() { close(ns.done) })
	return nil
}
