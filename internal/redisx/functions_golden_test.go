package redisx

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"testing"
)

var updateFunctions = flag.Bool("update", false, "rewrite the functions library file the Python client reads")

// functionsPath is the bus's library as the Python client loads and calls
// it (clients/python/mycelium/functions.json): the same FCALL names, the
// same code, so a mixed fleet shares one library and the ACL roles (+fcall,
// never +eval) fit Python clients too.
const functionsPath = "../../clients/python/mycelium/functions.json"

type functionsFile struct {
	Library string            `json:"library"`
	Code    string            `json:"code"`
	Scripts map[string]script `json:"scripts"`
}

type script struct {
	Function string `json:"function"`
	Body     string `json:"body"`
}

func functionsDoc() functionsFile {
	l := lib()
	f := functionsFile{Library: l.name, Code: l.code, Scripts: map[string]script{}}
	scriptsMu.Lock()
	defer scriptsMu.Unlock()
	for _, s := range scripts {
		f.Scripts[s.name] = script{Function: s.function(l.version), Body: s.body}
	}
	return f
}

// TestFunctionsFileCurrent keeps the Python client's copy of the library in
// step (go test ./internal/redisx -run FunctionsFile -update rewrites it).
func TestFunctionsFileCurrent(t *testing.T) {
	want, err := json.MarshalIndent(functionsDoc(), "", " ")
	if err != nil {
		t.Fatal(err)
	}
	want = append(want, '\n')
	if *updateFunctions {
		if err := os.WriteFile(functionsPath, want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(functionsPath)
	if err != nil {
		t.Fatalf("%v (go test ./internal/redisx -run FunctionsFile -update writes it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s is out of date: go test ./internal/redisx -run FunctionsFile -update", functionsPath)
	}
}
