package redisx

import (
	"context"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// TestPortCoversTheFunctions: every function of this package that takes
// (ctx, rueidis.Client, ...) has its Port method, so no caller needs the
// client itself (the drills' FailoverTo and ShutdownNode, EachMaster and
// DoBatch apart: they take a node or raw commands).
func TestPortCoversTheFunctions(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	skip := map[string]bool{"EachMaster": true, "DoBatch": true, "FailoverTo": true, "ShutdownNode": true}
	methods := map[string]bool{}
	pt := reflect.TypeOf(&Port{})
	for i := range pt.NumMethod() {
		methods[pt.Method(i).Name] = true
	}
	fset := token.NewFileSet()
	n := 0
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		af, err := parser.ParseFile(fset, f, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range af.Decls {
			fd, ok := d.(*ast.FuncDecl)
			if !ok || fd.Recv != nil || !fd.Name.IsExported() || skip[fd.Name.Name] || len(fd.Type.Params.List) < 2 {
				continue
			}
			sel, ok := fd.Type.Params.List[1].Type.(*ast.SelectorExpr)
			if !ok || sel.Sel.Name != "Client" {
				continue
			}
			n++
			if !methods[fd.Name.Name] {
				t.Errorf("%s takes a rueidis.Client but Port has no %s method", fd.Name.Name, fd.Name.Name)
			}
		}
	}
	if n < 50 {
		t.Fatalf("found %d functions taking a client: the test no longer sees them", n)
	}
}

// TestPortDeadlineIsTheCallers: a command the caller's deadline overran
// (the port ran it detached, then cancelled it: context.Canceled) fails
// with context.DeadlineExceeded, as if the command had carried the
// deadline (test/metrics_test.go sees it against a hung redis-server); a
// cancelled caller sees its cancellation.
func TestPortDeadlineIsTheCallers(t *testing.T) {
	expired, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	if err := overran(expired, fmt.Errorf("rueidis: %w", context.Canceled)); !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		t.Fatalf("overran(expired, Canceled) = %v, want DeadlineExceeded only", err)
	}
	cancelled, cancel2 := context.WithCancel(context.Background())
	cancel2()
	if err := overran(cancelled, context.Canceled); !errors.Is(err, context.Canceled) {
		t.Fatalf("overran(cancelled, Canceled) = %v, want Canceled", err)
	}
	if err := overran(expired, nil); err != nil {
		t.Fatalf("overran(expired, nil) = %v", err)
	}
}
