package spool

import (
	"strings"
	"testing"
)

// BenchmarkCommit is one durable spool write of a 4 KiB message: temp
// file, fsync, rename, envelope, fsync, rename, directory fsync.
func BenchmarkCommit(b *testing.B) {
	s, err := Open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	body := strings.Repeat(strings.Repeat("x", 62)+"\r\n", 64)
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for i := 0; i < b.N; i++ {
		d, err := s.Create()
		if err != nil {
			b.Fatal(err)
		}
		d.WriteString(body)
		if err := d.Commit(testEnvelope()); err != nil {
			b.Fatal(err)
		}
	}
}
