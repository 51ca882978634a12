// Command shape measures the shape of the library's code, for the
// redesign of producer and consumer (issue 25): methods per receiver,
// functions over 80 lines, calls of bus.Client.Redis() outside package bus
// and the Redis port, and the places that build a request's envelope (the
// request write paths).
//
//	go run ./test/shape [-max-methods 25] [-max-lines 80] [-check]
//
// With -check it exits 1 when a limit is passed.
package main

import (
	"flag"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

func main() {
	maxMethods := flag.Int("max-methods", 25, "most methods a receiver of producer or consumer may have")
	maxLines := flag.Int("max-lines", 80, "longest non-test function in producer, consumer, bus")
	check := flag.Bool("check", false, "exit 1 when a limit is passed")
	flag.Parse()
	fset := token.NewFileSet()
	bad := 0

	methods := map[string]int{} // pkg.Recv -> count
	type long struct {
		name  string
		lines int
	}
	var longs []long
	redisCalls := map[string]int{} // package -> calls of .Redis()
	writePaths := map[string]bool{}

	for _, pkg := range []string{"producer", "consumer", "bus", "inspect", "codec", "breaker", "metrics", "prom"} {
		files, _ := filepath.Glob(filepath.Join(pkg, "*.go"))
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			af, err := parser.ParseFile(fset, f, nil, 0)
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(2)
			}
			for _, d := range af.Decls {
				fd, ok := d.(*ast.FuncDecl)
				if !ok || fd.Body == nil {
					continue
				}
				name := fd.Name.Name
				if fd.Recv != nil && len(fd.Recv.List) == 1 {
					recv := typeName(fd.Recv.List[0].Type)
					methods[pkg+"."+recv]++
					name = recv + "." + name
				}
				n := fset.Position(fd.End()).Line - fset.Position(fd.Pos()).Line + 1
				if n > *maxLines && (pkg == "producer" || pkg == "consumer" || pkg == "bus") {
					longs = append(longs, long{pkg + "." + name, n})
				}
				ast.Inspect(fd.Body, func(x ast.Node) bool {
					switch x := x.(type) {
					case *ast.CallExpr:
						if sel, ok := x.Fun.(*ast.SelectorExpr); ok && sel.Sel.Name == "Redis" && len(x.Args) == 0 && pkg != "bus" {
							redisCalls[pkg]++
						}
					case *ast.CompositeLit:
						if typeName(x.Type) == "codec.Envelope" {
							for _, e := range x.Elts {
								if kv, ok := e.(*ast.KeyValueExpr); ok {
									if k, ok := kv.Key.(*ast.Ident); ok && k.Name == "Kind" {
										if v, ok := kv.Value.(*ast.SelectorExpr); ok && v.Sel.Name == "KindRequest" {
											writePaths[pkg+"."+name] = true
										}
									}
								}
							}
						}
					}
					return true
				})
			}
		}
	}

	fmt.Println("methods per receiver (producer, consumer; top 8):")
	type kv struct {
		k string
		v int
	}
	var ms []kv
	for k, v := range methods {
		if strings.HasPrefix(k, "producer.") || strings.HasPrefix(k, "consumer.") {
			ms = append(ms, kv{k, v})
		}
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].v > ms[j].v || ms[i].v == ms[j].v && ms[i].k < ms[j].k })
	for i, m := range ms {
		if m.v > *maxMethods {
			bad++
		}
		if i < 8 {
			fmt.Printf("  %-32s %d\n", m.k, m.v)
		}
	}
	sort.Slice(longs, func(i, j int) bool { return longs[i].lines > longs[j].lines })
	fmt.Printf("functions over %d lines (producer, consumer, bus): %d\n", *maxLines, len(longs))
	for _, l := range longs {
		fmt.Printf("  %-40s %d\n", l.name, l.lines)
	}
	bad += len(longs)
	fmt.Println("calls of Client.Redis() outside bus:")
	var pkgs []string
	for p := range redisCalls {
		pkgs = append(pkgs, p)
	}
	sort.Strings(pkgs)
	for _, p := range pkgs {
		fmt.Printf("  %-12s %d\n", p, redisCalls[p])
		if p == "producer" || p == "consumer" || p == "inspect" {
			bad += redisCalls[p]
		}
	}
	var wp []string
	for k := range writePaths {
		wp = append(wp, k)
	}
	sort.Strings(wp)
	fmt.Printf("functions building a request envelope (write paths): %d %v\n", len(wp), wp)
	if len(wp) > 1 {
		bad++
	}
	if *check && bad > 0 {
		fmt.Printf("%d limits passed\n", bad)
		os.Exit(1)
	}
}

func typeName(e ast.Expr) string {
	switch t := e.(type) {
	case *ast.StarExpr:
		return typeName(t.X)
	case *ast.Ident:
		return t.Name
	case *ast.SelectorExpr:
		return typeName(t.X) + "." + t.Sel.Name
	case *ast.IndexExpr:
		return typeName(t.X)
	case *ast.IndexListExpr:
		return typeName(t.X)
	}
	return ""
}
