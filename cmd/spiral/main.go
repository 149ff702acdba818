// Command spiral is the command line of the Spiral chaos suite: the suites'
// scenarios run against a target with live progress (spiral run), a socket
// census (spiral sockets), the index and summary of run reports (spiral
// report), and the peaks of several runs beside their budgets (spiral
// envelope).
//
// Usage:
//
//	spiral <command> [flags]
//	spiral help [command]
//
// Each command lives in its own file and registers itself with register in
// an init function, so adding one touches no other file.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"

	"github.com/spiral-chaos/spiral/probe"
)

// command is one subcommand of spiral.
type command struct {
	// name is what the user types: "spiral <name>".
	name string
	// summary is one line for "spiral help".
	summary string
	// usage is the full help text of the command, flags excepted.
	usage string
	// run executes the command with the arguments after its name, writing
	// its results to out. A *usageError makes main print usage. run must
	// parse its flags (newFlagSet, parseFlags) before doing anything else:
	// "spiral help <name>" calls it with -h to print its flags.
	run func(ctx context.Context, args []string, out io.Writer) error
}

// commands holds every registered command by name.
var commands = map[string]command{}

// register adds c to the commands; each command's file calls it from init.
func register(c command) {
	if _, dup := commands[c.name]; dup {
		panic("spiral: command " + c.name + " registered twice")
	}
	commands[c.name] = c
}

// usageError is a mistake in the command line rather than a failure.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return &usageError{fmt.Sprintf(format, args...)} }

// exit codes, as flag and most Go tools use them.
const (
	exitFailure = 1
	exitUsage   = 2
)

func main() {
	probe.ServeObserver() // `spiral run` samples an in-process data plane through one
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run dispatches args to a command and returns the process exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		printf(stderr, "%s", helpText())
		return exitUsage
	}
	name := args[0]
	if name == "-h" || name == "--help" || name == "-help" {
		name = "help"
	}
	c, ok := commands[name]
	if !ok {
		printf(stderr, "spiral: unknown command %q\n\n%s", name, helpText())
		return exitUsage
	}
	err := c.run(ctx, args[1:], stdout)
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if ue, ok := errors.AsType[*usageError](err); ok {
		printf(stderr, "spiral %s: %s\nRun 'spiral help %s' for usage.\n", c.name, ue.msg, c.name)
		return exitUsage
	}
	printf(stderr, "spiral %s: %v\n", c.name, err)
	return exitFailure
}

// printf writes a diagnostic; there is nowhere left to report a failure to
// write to stderr, so it is dropped.
func printf(w io.Writer, format string, args ...any) {
	_, _ = fmt.Fprintf(w, format, args...)
}

// newFlagSet returns a flag set for command c that reports errors as usage
// errors and prints its help to out on -h.
func newFlagSet(c string, out io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("spiral "+c, flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Usage = func() {
		if cmd, ok := commands[c]; ok {
			printf(out, "%s\n\n", strings.TrimSpace(cmd.usage))
		}
		printf(out, "Flags:\n")
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses args into fs, turning parse failures into usage errors.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usagef("%v", err)
	}
	if fs.NArg() > 0 {
		return usagef("unexpected argument %q", fs.Arg(0))
	}
	return nil
}

// helpText lists the commands.
func helpText() string {
	var b strings.Builder
	b.WriteString("Spiral: chaos and fault-injection tests for a Go data plane in front of memcached\nand a CQL store.\n\n")
	b.WriteString("Usage:\n\tspiral <command> [flags]\n\nCommands:\n")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		fmt.Fprintf(&b, "\t%-10s %s\n", n, commands[n].summary)
	}
	b.WriteString("\nRun 'spiral help <command>' for a command's flags.\n")
	return b.String()
}

func init() {
	register(command{
		name:    "help",
		summary: "show the commands, or one command's usage",
		usage:   "Usage: spiral help [command]",
		run: func(_ context.Context, args []string, out io.Writer) error {
			switch len(args) {
			case 0:
				if _, err := io.WriteString(out, helpText()); err != nil {
					return fmt.Errorf("write help: %w", err)
				}
				return nil
			case 1:
				c, ok := commands[args[0]]
				if !ok {
					return usagef("unknown command %q", args[0])
				}
				fs := newFlagSet(c.name, out)
				// Print the command's own flags by asking it for -h.
				if c.name == "help" {
					fs.Usage()
					return nil
				}
				err := c.run(context.Background(), []string{"-h"}, out)
				if errors.Is(err, flag.ErrHelp) {
					return nil
				}
				return err
			default:
				return usagef("help takes at most one command")
			}
		},
	})
}
