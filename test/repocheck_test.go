package test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestCheckRepo runs test/check-repo.sh on a scratch git repository: it
// passes on sources and fails on a tracked ELF binary, on a tracked
// executable holding NUL bytes, and on a tracked file over 1 MiB.
func TestCheckRepo(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		t.Fatalf("git not on PATH: %v", err)
	}
	script, err := filepath.Abs("check-repo.sh")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, file string
		data       []byte
		mode       os.FileMode
		want       string // "" = passes
	}{
		{"sources only", "main.go", []byte("package main\n"), 0o644, ""},
		{"shell script", "run.sh", []byte("#!/bin/sh\necho hi\n"), 0o755, ""},
		{"ELF binary", "bus-worker", append([]byte{0x7f, 'E', 'L', 'F', 2, 1, 1}, make([]byte, 64)...), 0o755, "executable binary"},
		{"ELF without the x bit", "tool", append([]byte{0x7f, 'E', 'L', 'F'}, make([]byte, 64)...), 0o644, "executable binary"},
		{"executable with NUL bytes", "blob", []byte("ab\x00cd"), 0o755, "executable and binary"},
		{"file over 1 MiB", "data.json", []byte(strings.Repeat("x", 1<<20+1)), 0o644, "more than 1 MiB"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			git := func(args ...string) {
				t.Helper()
				cmd := exec.Command("git", append([]string{"-C", dir, "-c", "user.name=t", "-c", "user.email=t@t"}, args...)...)
				if out, err := cmd.CombinedOutput(); err != nil {
					t.Fatalf("git %v: %v\n%s", args, err, out)
				}
			}
			git("init", "-q")
			if err := os.WriteFile(filepath.Join(dir, "README.md"), []byte("# r\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, tc.file), tc.data, tc.mode); err != nil {
				t.Fatal(err)
			}
			git("add", "-A")
			out, err := exec.Command(script, dir).CombinedOutput()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("check-repo on %s = %v, want success\n%s", tc.file, err, out)
			case tc.want != "" && err == nil:
				t.Fatalf("check-repo on %s succeeded, want a failure naming %q\n%s", tc.file, tc.want, out)
			case tc.want != "" && (!strings.Contains(string(out), tc.file+" is") || !strings.Contains(string(out), tc.want)):
				t.Fatalf("check-repo on %s said %q, want it to name the file and %q", tc.file, out, tc.want)
			}
		})
	}
}
