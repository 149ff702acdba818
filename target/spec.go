package target

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/spiral-chaos/spiral/dataplane"
)

// EnvTarget selects the target of every suite's arm under test (see Parse).
const EnvTarget = "SPIRAL_TARGET"

// Kinds of Spec.
const (
	KindInProcess = "in-process"
	KindExec      = "exec"
	KindURL       = "url"
)

// Spec is a target as a user names it, before it is built.
type Spec struct {
	Kind string
	// Path and Args: KindExec's binary (resolved) and arguments.
	Path string
	Args []string
	// URL and PID: KindURL's base URL and process (NoProcess if none).
	URL string
	PID int
	// Shape is how the service takes a batch RPC (KindExec, KindURL);
	// FromEnv reads it from EnvRequestPath and its siblings.
	Shape dataplane.RequestShape
}

// Variables describing a service's batch RPC when it is not the bundled
// data plane's (dataplane.RequestShape): where batches are posted, the JSON
// field with the keys, the JSON field and the header naming the client
// ("-" for none).
const (
	EnvRequestPath         = "SPIRAL_REQUEST_PATH"
	EnvRequestKeysField    = "SPIRAL_REQUEST_KEYS_FIELD"
	EnvRequestClientField  = "SPIRAL_REQUEST_CLIENT_FIELD"
	EnvRequestClientHeader = "SPIRAL_REQUEST_CLIENT_HEADER"
)

// Parse reads a target's name:
//
//	""  or  in-process          the bundled data plane, in the test process
//	exec:<path> [args...]       a binary run as a supervised child process;
//	                            {addr} in args is its address
//	url:<base>[,pid=N]          a service already running at base
//
// An exec path without a slash is looked up in PATH; a relative one is
// taken from the module's root (where `go test ./suites/...` runs), since
// each suite's test binary runs in its own package folder. Arguments are
// split at spaces.
func Parse(s string) (Spec, error) {
	s = strings.TrimSpace(s)
	kind, rest, _ := strings.Cut(s, ":")
	switch kind {
	case "", KindInProcess:
		if rest != "" {
			return Spec{}, fmt.Errorf("%s=%q: in-process takes no argument", EnvTarget, s)
		}
		return Spec{Kind: KindInProcess}, nil
	case KindExec:
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			return Spec{}, fmt.Errorf("%s=%q: exec: names no binary (want exec:<path> [args...])", EnvTarget, s)
		}
		path, err := resolveBinary(fields[0])
		if err != nil {
			return Spec{}, fmt.Errorf("%s=%q: %w", EnvTarget, s, err)
		}
		return Spec{Kind: KindExec, Path: path, Args: fields[1:]}, nil
	case KindURL:
		base, opts, _ := strings.Cut(rest, ",")
		sp := Spec{Kind: KindURL, URL: base, PID: NoProcess}
		if opts != "" {
			v, ok := strings.CutPrefix(opts, "pid=")
			n, err := strconv.Atoi(v)
			if !ok || err != nil || n <= 0 {
				return Spec{}, fmt.Errorf("%s=%q: after the URL, want ,pid=N with N a positive pid", EnvTarget, s)
			}
			sp.PID = n
		}
		if _, err := NewEndpoint(sp.URL, sp.PID); err != nil {
			return Spec{}, fmt.Errorf("%s=%q: %w", EnvTarget, s, err)
		}
		return sp, nil
	}
	return Spec{}, fmt.Errorf("%s=%q: unknown kind %q: want in-process, exec:<path> [args] or url:<base>[,pid=N]", EnvTarget, s, kind)
}

// FromEnv parses $SPIRAL_TARGET and the request shape's variables, which
// only a target other than in-process may set.
func FromEnv() (Spec, error) {
	spec, err := Parse(os.Getenv(EnvTarget))
	if err != nil {
		return Spec{}, err
	}
	spec.Shape = dataplane.RequestShape{
		Path:         os.Getenv(EnvRequestPath),
		KeysField:    os.Getenv(EnvRequestKeysField),
		ClientField:  os.Getenv(EnvRequestClientField),
		ClientHeader: os.Getenv(EnvRequestClientHeader),
	}
	if !spec.Shape.IsZero() && spec.Kind == KindInProcess {
		return Spec{}, fmt.Errorf("%s and its siblings describe your service's batch RPC: they need %s=exec:... or url:... (the bundled data plane takes its own)", EnvRequestPath, EnvTarget)
	}
	if err := spec.Shape.Validate(); err != nil {
		return Spec{}, fmt.Errorf("%s...: %w", EnvRequestPath, err)
	}
	return spec, nil
}

// String is the spec as Parse reads it.
func (s Spec) String() string {
	switch s.Kind {
	case KindExec:
		return "exec:" + strings.Join(append([]string{s.Path}, s.Args...), " ")
	case KindURL:
		if s.PID > 0 {
			return fmt.Sprintf("url:%s,pid=%d", s.URL, s.PID)
		}
		return "url:" + s.URL
	}
	return KindInProcess
}

// New builds the target: in-process serves the bundled data plane with cfg;
// the others are the user's service and ignore cfg.
func (s Spec) New(cfg dataplane.Config) (Target, error) {
	switch s.Kind {
	case KindInProcess, "":
		return NewInProcess(cfg), nil
	case KindExec:
		return NewExec(s.ExecConfig())
	case KindURL:
		t, err := NewEndpoint(s.URL, s.PID)
		if err != nil {
			return nil, err
		}
		t.shape = s.Shape
		return t, nil
	}
	return nil, fmt.Errorf("target spec: unknown kind %q", s.Kind)
}

// ExecConfig is a KindExec spec's child as an ExecConfig, for a caller that
// adds to it (a log sink as its stderr, a cgroup) before NewExec.
func (s Spec) ExecConfig() ExecConfig {
	return ExecConfig{Path: s.Path, Args: slices.Clone(s.Args), Shape: s.Shape}
}

func resolveBinary(p string) (string, error) {
	if !strings.Contains(p, "/") {
		found, err := exec.LookPath(p)
		if err != nil {
			return "", fmt.Errorf("exec: %w", err)
		}
		p = found
	} else if !filepath.IsAbs(p) {
		root, err := ModuleRoot()
		if err != nil {
			return "", fmt.Errorf("exec: relative path %s: %w", p, err)
		}
		p = filepath.Join(root, p)
	}
	if err := checkExecutable(p); err != nil {
		return "", fmt.Errorf("exec: %w", err)
	}
	return p, nil
}

// checkExecutable says why p is not an executable file, or nil.
func checkExecutable(p string) error {
	st, err := os.Stat(p)
	switch {
	case err != nil:
		return err
	case st.IsDir() || st.Mode().Perm()&0o111 == 0:
		return fmt.Errorf("%s is not an executable file", p)
	}
	return nil
}
