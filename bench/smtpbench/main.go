// Command smtpbench benchmarks the caddy-smtp gateway side by side with a
// private Postfix instance (GitHub issue 5). bench/run.sh installs what it
// needs, builds Caddy from this repository and this program, and runs
//
//	smtpbench run -caddy BIN -work DIR -cert CERT -key KEY
//
// which, for every cell (plaintext or STARTTLS in and out; 4 KiB or
// 100 KiB messages; 1 or 50 concurrent connections), starts a fresh
// gateway and a fresh Postfix relaying to the harness's own sink, drives
// each the same way with the harness's own load generator, and prints a
// markdown table with the ratio gateway/Postfix per column, next to the
// machine's physical ceilings (fsyncs/s of the disk, TLS handshakes/s).
// In the STARTTLS 4 KiB cells c=20 ×1 and c=50 it also runs the peers
// maddy, chasquid and Haraka (issue 16; peers.go) and prints their table
// with ratios to the gateway.
//
// The other subcommands run one part on its own, for poking at a system
// by hand:
//
//	smtpbench load -addr 127.0.0.1:2525 -tls -n 1000 -c 50 -size 4096
//	smtpbench sink -addr 127.0.0.1:2953 -cert CERT -key KEY
//	smtpbench ceiling -dir /var/tmp -cert CERT -key KEY
package main

import (
	"fmt"
	"os"
)

func usage() {
	fmt.Fprintf(os.Stderr, `usage: smtpbench <command> [flags]

commands:
  run       the whole benchmark (gateway and Postfix, every cell, table)
  load      the load generator alone, against any SMTP server
  sink      the STARTTLS sink alone; prints a line per message
  ceiling   the machine's fsync rate and TLS handshake rate
  dns       the loopback DNS stub chasquid's runs resolve through

"smtpbench <command> -h" lists a command's flags.
`)
	os.Exit(2)
}

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "run":
		err = cmdRun(os.Args[2:])
	case "load":
		err = cmdLoad(os.Args[2:])
	case "sink":
		err = cmdSink(os.Args[2:])
	case "ceiling":
		err = cmdCeiling(os.Args[2:])
	case "dns":
		err = cmdDNS(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "smtpbench:", err)
		os.Exit(1)
	}
}
