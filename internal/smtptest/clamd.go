package smtptest

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// EICAR is the EICAR anti-virus test string, assembled at run time.
var EICAR = "X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + "EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"

// StartClamd runs a real clamd (Debian's clamav-daemon) with a private
// config, socket and a database holding only the EICAR signature (there
// are no downloaded signatures offline), on a free loopback port; it
// returns its address. It fails under CI=true without clamd, and skips
// otherwise.
func StartClamd(t testing.TB) string { return StartClamdLimit(t, "30M") }

// StartClamdLimit is StartClamd with clamd's StreamMaxLength.
func StartClamdLimit(t testing.TB, limit string) string {
	t.Helper()
	bin, err := exec.LookPath("clamd")
	if err != nil {
		for _, p := range []string{"/usr/sbin/clamd"} {
			if _, err := os.Stat(p); err == nil {
				bin = p
			}
		}
	}
	if bin == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("clamd is not installed (Debian package clamav-daemon)")
		}
		t.Skip("clamd is not installed (Debian package clamav-daemon)")
	}
	dir := t.TempDir()
	db := filepath.Join(dir, "db")
	os.Mkdir(db, 0o755)
	hexSig := fmt.Sprintf("%x", EICAR)
	if err := os.WriteFile(filepath.Join(db, "eicar.ndb"), []byte("Eicar-Test-Signature:0:*:"+hexSig+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	port := FreePort(t)
	conf := filepath.Join(dir, "clamd.conf")
	os.WriteFile(conf, []byte(fmt.Sprintf(`Foreground yes
TCPSocket %d
TCPAddr 127.0.0.1
DatabaseDirectory %s
LogFile %s
PidFile %s
StreamMaxLength %s
`, port, db, filepath.Join(dir, "clamd.log"), filepath.Join(dir, "clamd.pid"), limit)), 0o644)
	cmd := exec.Command(bin, "-c", conf)
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	if !Eventually(60*time.Second, func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return false
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write([]byte("zPING\x00"))
		r, _ := bufio.NewReader(c).ReadString(0)
		return strings.HasPrefix(r, "PONG")
	}) {
		log, _ := os.ReadFile(filepath.Join(dir, "clamd.log"))
		t.Fatalf("clamd did not answer PING within 60s:\n%s", log)
	}
	return addr
}

// StartClamavMilter runs a real clamav-milter (Debian's clamav-milter)
// in front of the clamd at clamdAddr, with a private config, on a free
// loopback port: infected messages are rejected, a down clamd defers,
// no headers added. It returns the milter's address. It fails under
// CI=true without clamav-milter, and skips otherwise.
func StartClamavMilter(t testing.TB, clamdAddr string) string {
	t.Helper()
	bin, err := exec.LookPath("clamav-milter")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/clamav-milter"); serr == nil {
			bin, err = "/usr/sbin/clamav-milter", nil
		}
	}
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("clamav-milter is not installed (Debian package clamav-milter)")
		}
		t.Skip("clamav-milter is not installed (Debian package clamav-milter)")
	}
	dir := t.TempDir()
	port := FreePort(t)
	conf := filepath.Join(dir, "clamav-milter.conf")
	text := fmt.Sprintf(`Foreground yes
MilterSocket inet:%d@127.0.0.1
ClamdSocket tcp:%s
OnInfected Reject
OnFail Defer
OnClean Accept
AddHeader No
RejectMsg "Virus found: %%v"
LogFile %s
PidFile %s
`, port, clamdAddr, filepath.Join(dir, "milter.log"), filepath.Join(dir, "milter.pid"))
	if os.Geteuid() == 0 {
		text += "User root\n"
	}
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-c", conf)
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	if !Eventually(30*time.Second, func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	}) {
		log, _ := os.ReadFile(filepath.Join(dir, "milter.log"))
		t.Fatalf("clamav-milter did not listen within 30s:\n%s", log)
	}
	return addr
}
