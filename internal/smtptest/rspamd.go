package smtptest

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// GTUBE is rspamd's (and SpamAssassin's) spam test string, assembled at
// run time.
var GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*" + "GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

// rspamdTestLua is a prefilter that makes rspamd give an action on
// demand (a subject holding SOFTREJECT, GREYLISTME, ADDHEADER or
// REWRITESUBJECT), so the mapping of each action is tested against
// rspamd itself.
const rspamdTestLua = `rspamd_config:register_symbol({
  name = 'CADDY_SMTP_TEST', type = 'prefilter', priority = 10,
  callback = function(task)
    local s = task:get_header('Subject') or ''
    if s:find('SOFTREJECT', 1, true) then task:set_pre_result('soft reject', 'Test soft reject') end
    if s:find('GREYLISTME', 1, true) then task:set_pre_result('greylist', 'Test greylist') end
    if s:find('ADDHEADER', 1, true) then task:set_pre_result('add header', 'Test add header') end
    if s:find('REWRITESUBJECT', 1, true) then task:set_pre_result('rewrite subject', 'Test rewrite subject') end
  end })
`

// StartRspamd runs a real rspamd (Debian's rspamd) with a private local
// config, database and run directories, on free loopback ports, with
// DNS pointed at a closed port (offline, lookups fail fast) and no
// redis; it returns the normal worker's URL. It fails under CI=true
// without rspamd, and skips otherwise.
func StartRspamd(t testing.TB) string {
	t.Helper()
	url, _ := StartRspamdMilter(t)
	return url
}

// StartRspamdMilter is StartRspamd that also returns the address of its
// proxy worker in milter mode, scanning itself (self_scan).
func StartRspamdMilter(t testing.TB) (url, milter string) {
	t.Helper()
	bin, err := exec.LookPath("rspamd")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("rspamd is not installed (Debian package rspamd)")
		}
		t.Skip("rspamd is not installed (Debian package rspamd)")
	}
	dir := t.TempDir()
	for _, d := range []string{"local.d", "db", "run"} {
		os.Mkdir(filepath.Join(dir, d), 0o755)
	}
	normal, controller, proxy := FreePort(t), FreePort(t), FreePort(t)
	files := map[string]string{
		"local.d/worker-normal.inc":     fmt.Sprintf("bind_socket = \"127.0.0.1:%d\";\ncount = 1;\n", normal),
		"local.d/worker-controller.inc": fmt.Sprintf("bind_socket = \"127.0.0.1:%d\";\ncount = 1;\n", controller),
		"local.d/worker-proxy.inc": fmt.Sprintf("bind_socket = \"127.0.0.1:%d\";\ncount = 1;\nmilter = yes;\n"+
			"upstream \"local\" {\n  default = yes;\n  self_scan = yes;\n}\n", proxy),
		"local.d/logging.inc": "type = \"file\";\nfilename = \"" + filepath.Join(dir, "rspamd.log") + "\";\nlevel = \"error\";\n",
		"local.d/options.inc": fmt.Sprintf("dns { nameserver = [\"127.0.0.1:%d\"]; timeout = 0.5s; retransmits = 1; }\n", FreePort(t)),
		"rspamd.local.lua":    rspamdTestLua,
		// rspamd's own headers on every message, also from loopback
		// (the tests' clients): X-Spamd-Result, X-Rspamd-Server,
		// X-Rspamd-Queue-Id, and X-Spam / X-Spamd-Bar on spam.
		"local.d/milter_headers.conf": "extended_spam_headers = true;\nskip_local = false;\nskip_authenticated = false;\n",
	}
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	args := []string{"-f", "--var", "LOCAL_CONFDIR=" + dir, "--var", "DBDIR=" + filepath.Join(dir, "db"),
		"--var", "RUNDIR=" + filepath.Join(dir, "run"), "--var", "LOGDIR=" + dir}
	if os.Geteuid() == 0 {
		args = append(args, "-u", "root", "-g", "root", "--insecure")
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	// rspamd forks workers: its own process group, killed whole.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); cmd.Wait() })
	url = fmt.Sprintf("http://127.0.0.1:%d", normal)
	milter = fmt.Sprintf("127.0.0.1:%d", proxy)
	client := &http.Client{Timeout: time.Second}
	if !Eventually(60*time.Second, func() bool {
		resp, err := client.Get(url + "/ping")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}) {
		log, _ := os.ReadFile(filepath.Join(dir, "rspamd.log"))
		t.Fatalf("rspamd did not answer /ping within 60s:\n%s", log)
	}
	if !Eventually(30*time.Second, func() bool {
		c, err := net.DialTimeout("tcp", milter, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	}) {
		t.Fatal("rspamd's proxy worker did not listen within 30s")
	}
	return url, milter
}
