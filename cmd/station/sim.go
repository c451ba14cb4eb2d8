package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"

	"station.dev/agent/agent/contract"
)

func cmdSelftest(args []string, stdout, _ io.Writer) error {
	fs := flag.NewFlagSet("selftest", flag.ContinueOnError)
	var f clientFlags
	f.register(fs)
	if err := noArgs(fs, args); err != nil {
		return err
	}
	var st contract.SelfTest
	if err := newClient(f.socket).getJSON(contract.PathSelfTest, &st); err != nil {
		return err
	}
	if f.json {
		if err := printJSON(stdout, st); err != nil {
			return err
		}
	} else {
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		for _, c := range st.Checks {
			res := "ok"
			if !c.OK {
				res = "FAIL"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\n", c.Name, res, c.Detail)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if !st.OK {
		return errSilent
	}
	return nil
}

// cmdSim drives the emulated parts of a --sim agent:
//
//	station sim door open|close
//	station sim env --temp C [--humidity H]
func cmdSim(args []string, stdout, _ io.Writer) error {
	fs := flag.NewFlagSet("sim", flag.ContinueOnError)
	var f clientFlags
	f.register(fs)
	temp := fs.String("temp", "", "cabinet temperature in °C (sim env)")
	hum := fs.String("humidity", "", "relative humidity in % (sim env)")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	c := newClient(f.socket)
	switch {
	case len(pos) == 2 && pos[0] == "door" && (pos[1] == "open" || pos[1] == "close"):
		resp, err := c.do("POST", contract.PathSimDoor, contract.SimDoorRequest{Open: pos[1] == "open"})
		if err != nil {
			return err
		}
		resp.Body.Close()
		fmt.Fprintf(stdout, "door %s\n", map[bool]string{true: "opened", false: "closed"}[pos[1] == "open"])
		return nil
	case len(pos) == 1 && pos[0] == "env":
		if *temp == "" {
			return usagef("sim env needs --temp C")
		}
		var req contract.SimEnvRequest
		if req.TempC, err = strconv.ParseFloat(*temp, 64); err != nil {
			return usagef("--temp %q is not a number", *temp)
		}
		if *hum != "" {
			h, err := strconv.ParseFloat(*hum, 64)
			if err != nil {
				return usagef("--humidity %q is not a number", *hum)
			}
			req.Humidity = &h
		}
		resp, err := c.do("POST", contract.PathSimEnv, req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		b, _ := json.Marshal(req)
		if f.json {
			_, err = fmt.Fprintf(stdout, "%s\n", b)
			return err
		}
		fmt.Fprintf(stdout, "cabinet sensor set: %.1f°C\n", req.TempC)
		return nil
	}
	return usagef("want: station sim door open|close, or station sim env --temp C [--humidity H]")
}
