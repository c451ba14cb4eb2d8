// Command station is the station agent: `station run` is the daemon; the other subcommands are
// thin clients of its local API (DESIGN §3.1) or work on their own (config, version).
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strings"
	"time"
)

// Stamped at build time by cross-build.sh (-ldflags "-X main.version=… -X main.commit=…").
var (
	version = "dev"
	commit  = ""
)

// buildTime is when the binary was built, from the commit time Go stamps into it (vcs.time), or
// zero when unknown: the trusted time of the agent never goes below it.
func buildTime() time.Time {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return time.Time{}
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.time" {
			t, err := time.Parse(time.RFC3339, s.Value)
			if err == nil {
				return t
			}
		}
	}
	return time.Time{}
}

// usageError is a mistake in the command line: exit status 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

// silentError is a failure already reported on stdout (e.g. a refused tap): exit status 1, no message.
var errSilent = errors.New("")

type subcommand struct {
	name    string
	summary string
	run     func(args []string, stdout, stderr io.Writer) error
}

var commands []subcommand

func init() {
	commands = []subcommand{
		{"run", "run the agent (the daemon)", cmdRun},
		{"status", "show the running agent's status", cmdStatus},
		{"queue", "show the records waiting for the broker", cmdQueue},
		{"events", "show recent records (-f follows)", cmdEvents},
		{"tap", "present virtual cards to the emulated reader (--sim agents)", cmdTap},
		{"selftest", "check every component of the running agent", cmdSelftest},
		{"sim", "door open|close, env --temp C: drive the emulated parts (--sim agents)", cmdSim},
		{"config", "show|check a configuration file", cmdConfig},
		{"fleet", "operator side: keygen, ls, send, watch, release, update", cmdFleet},
		{"version", "print the version", cmdVersion},
	}
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	for _, c := range commands {
		if c.name != args[0] {
			continue
		}
		err := c.run(args[1:], stdout, stderr)
		var ue usageError
		switch {
		case err == nil:
			return 0
		case errors.Is(err, flag.ErrHelp):
			return 0
		case errors.As(err, &ue):
			fmt.Fprintf(stderr, "station %s: %s\n", c.name, ue.msg)
			fmt.Fprintf(stderr, "run 'station %s -h' for usage\n", c.name)
			return 2
		case errors.Is(err, errSilent):
			return 1
		case errors.Is(err, errRestart):
			return 75
		default:
			fmt.Fprintf(stderr, "station: %s\n", oneLine(err.Error()))
			return 1
		}
	}
	fmt.Fprintf(stderr, "station: unknown command %q\n", args[0])
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: station <command> [flags]")
	fmt.Fprintln(w)
	for _, c := range commands {
		fmt.Fprintf(w, "  %-9s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "'station <command> -h' shows a command's flags.")
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// parseFlags parses flags that may stand before or after positional arguments and returns the
// positional ones. Flag errors are usage errors.
func parseFlags(fs *flag.FlagSet, args []string) ([]string, error) {
	fs.SetOutput(io.Discard)
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				fs.SetOutput(os.Stderr)
				fmt.Fprintf(os.Stderr, "usage: station %s [flags]\n", fs.Name())
				fs.PrintDefaults()
				return nil, err
			}
			return nil, usageError{err.Error()}
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func cmdVersion(args []string, stdout, _ io.Writer) error {
	fs := flag.NewFlagSet("version", flag.ContinueOnError)
	jsonOut := fs.Bool("json", false, "print JSON")
	if _, err := parseFlags(fs, args); err != nil {
		return err
	}
	if *jsonOut {
		return printJSON(stdout, map[string]string{"version": version, "commit": commit})
	}
	if commit != "" {
		fmt.Fprintf(stdout, "station %s (%s)\n", version, commit)
	} else {
		fmt.Fprintf(stdout, "station %s\n", version)
	}
	return nil
}
