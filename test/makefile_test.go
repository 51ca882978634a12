package test

import (
	"os"
	"strings"
	"testing"
)

// TestLintRunsBesideAnotherMakeTest: make test's lint step does not take
// golangci-lint's machine-wide lock, so a make test beside another on the
// same machine does not fail with "parallel golangci-lint is running"
// (issue 31's acceptance run: two make tests at once; the second failed
// there before --allow-parallel-runners).
func TestLintRunsBesideAnotherMakeTest(t *testing.T) {
	b, err := os.ReadFile("../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if strings.HasPrefix(line, "\t$(GOLANGCI) run") && !strings.Contains(line, "--allow-parallel-runners") {
			t.Fatalf("the lint recipe %q waits for no other golangci-lint: add --allow-parallel-runners", strings.TrimSpace(line))
		}
	}
	if !strings.Contains(string(b), "$(GOLANGCI) run --allow-parallel-runners") {
		t.Fatal("no lint recipe found in the Makefile")
	}
}
