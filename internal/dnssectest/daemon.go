package dnssectest

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"
)

// daemon is NSD or Unbound, running in the foreground as a child of the
// test binary, in a process group of its own (NSD forks workers).
type daemon struct {
	name string
	addr string // 127.0.0.1:port
	port int
	log  string // its log file
	errf string // its stdout and stderr
	cmd  *exec.Cmd

	done    chan struct{} // closed when it has exited
	waitErr error         // set before done is closed
}

func startDaemon(name, path string, args []string, port int, stderrFile, logFile string) (*daemon, error) {
	f, err := os.OpenFile(stderrFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cmd := exec.Command(path, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %v", name, err)
	}
	d := &daemon{
		name: name, addr: "127.0.0.1:" + strconv.Itoa(port), port: port,
		log: logFile, errf: stderrFile, cmd: cmd, done: make(chan struct{}),
	}
	go func() {
		d.waitErr = cmd.Wait()
		close(d.done)
	}()
	return d, nil
}

func (d *daemon) exited() bool {
	select {
	case <-d.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM to the daemon's process group (its own, made at
// start: nothing else is in it), waits up to 5 s for the process it
// started to exit, then sends SIGKILL. NSD's forked workers outlive that
// process by a second or so: the group gets SIGKILL once it has exited
// (the workers still hold the group's id then), and stop waits, bounded,
// until the group is gone, so that its ports are free.
func (d *daemon) stop() error {
	if d.cmd.Process == nil {
		return nil
	}
	pid := d.cmd.Process.Pid
	var err error
	if !d.exited() {
		signalGroup(pid, syscall.SIGTERM)
		select {
		case <-d.done:
		case <-time.After(5 * time.Second):
			err = errors.New("did not exit within 5s of SIGTERM; killed")
		}
	}
	signalGroup(pid, syscall.SIGKILL)
	select {
	case <-d.done:
	case <-time.After(5 * time.Second):
		return errors.New("did not exit within 5s of SIGKILL")
	}
	deadline := time.Now().Add(2 * time.Second)
	for groupAlive(pid) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	return err
}

// logTail is the end of the daemon's log and of its stderr.
func (d *daemon) logTail() string {
	return fmt.Sprintf("---- %s ----\n%s---- %s ----\n%s", d.log, tail(d.log), d.errf, tail(d.errf))
}

func tail(path string) string {
	const max = 8 << 10
	f, err := os.Open(path)
	if err != nil {
		return err.Error() + "\n"
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > max {
		f.Seek(fi.Size()-max, io.SeekStart)
	}
	b, _ := io.ReadAll(f)
	return string(b)
}
