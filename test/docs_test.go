package test

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
)

// TestDocReferencesExist: every README section that code, help texts or
// scripts name exists in the README, every docs/*.md file they name exists,
// and every stream gauge /metrics exports is in the README's metrics table
// (issue 31, point 6: "/metrics" help named an "Observability" section that
// was not there, and mycelium_delayed_entries was missing from the table).
func TestDocReferencesExist(t *testing.T) {
	root := ".."
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	sections := map[string]bool{}
	for line := range strings.Lines(string(readme)) {
		if h, ok := strings.CutPrefix(line, "#"); ok {
			sections[strings.TrimSpace(strings.TrimLeft(h, "#"))] = true
		}
	}
	sectionRef := regexp.MustCompile(`README's \\?"([^"\\]+)\\?"`)
	plainRef := regexp.MustCompile(`README's ([A-Z][A-Za-z]+) section`)
	docRef := regexp.MustCompile(`docs/([a-z0-9-]+\.md)`)
	checked := 0
	err = filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() {
			if name == ".git" || name == "out" || name == "bin" || name == "node_modules" || strings.HasPrefix(name, ".") && path != root {
				return filepath.SkipDir
			}
			return nil
		}
		if name == "docs_test.go" || !strings.HasSuffix(name, ".go") && !strings.HasSuffix(name, ".py") && !strings.HasSuffix(name, ".sh") && name != "Makefile" {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range sectionRef.FindAllStringSubmatch(string(b), -1) {
			checked++
			if !sections[m[1]] {
				t.Errorf("%s names the README's %q section: no such heading", path, m[1])
			}
		}
		for _, m := range plainRef.FindAllStringSubmatch(string(b), -1) {
			checked++
			if !sections[m[1]] {
				t.Errorf("%s names the README's %s section: no such heading", path, m[1])
			}
		}
		for _, m := range docRef.FindAllStringSubmatch(string(b), -1) {
			checked++
			if _, err := os.Stat(filepath.Join(root, "docs", m[1])); err != nil {
				t.Errorf("%s names docs/%s: %v", path, m[1], err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if checked < 20 {
		t.Fatalf("only %d references checked: the walk missed the sources", checked)
	}
	// Every stream, group and cache gauge of package prom is in the table.
	src, err := os.ReadFile(filepath.Join(root, "prom", "stream.go"))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range regexp.MustCompile(`d\("([a-z_]+)"`).FindAllStringSubmatch(string(src), -1) {
		if !strings.Contains(string(readme), "mycelium_"+m[1]) {
			t.Errorf("gauge mycelium_%s is not in the README's metrics table", m[1])
		}
	}
}

// TestRigPortCheckBinds: the rigs' free-port check binds (issue 31, point
// 3): a port held without listening, as an outgoing connection's is,
// refuses connections and still cannot be bound; a connect test called it
// free and a cluster node then failed to start ("40000 bind in use").
func TestRigPortCheckBinds(t *testing.T) {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	defer func() {
		if !closed {
			_ = syscall.Close(fd)
		}
	}()
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	port := sa.(*syscall.SockaddrInet4).Port
	if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
		_ = c.Close()
		t.Fatalf("port %d bound without listening accepted a connection", port)
	}
	check := func(p int) bool {
		return exec.Command("bash", "-c", fmt.Sprintf(". rig-lib.sh; port_free %d", p)).Run() == nil
	}
	if check(port) {
		t.Fatalf("port_free %d = free, but it is bound", port)
	}
	_ = syscall.Close(fd)
	closed = true
	if !check(port) {
		t.Fatalf("port_free %d = busy once released", port)
	}
}
