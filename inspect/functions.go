package inspect

import (
	"context"

	"github.com/egos/mycelium/internal/redisx"
)

// The bus's scripts are a Redis Functions library (docs/security.md,
// "Scripts"): the operator loads it; producers and workers only call it.

// FunctionLibrary is one of the bus's function libraries on a server.
type FunctionLibrary struct {
	Node      string   // the master's address ("" when not a cluster)
	Name      string   // mycelium_<version>
	Current   bool     // this build's library
	Functions []string // its functions
}

// FunctionsLibrary returns the name of this build's library.
func FunctionsLibrary() string { return redisx.LibraryName() }

// LoadFunctions loads this build's library on every master, unless it is
// there: idempotent. Producers and workers whose users may not load it
// (bus-worker acl) need it loaded before they run scripts: cached
// requests, delayed events and retries, partitions.
func (i *Inspector) LoadFunctions(ctx context.Context) error {
	return i.port.LoadFunctions(ctx)
}

// Functions lists the bus's libraries on every master.
func (i *Inspector) Functions(ctx context.Context) ([]FunctionLibrary, error) {
	libs, err := i.port.ListFunctions(ctx)
	out := make([]FunctionLibrary, len(libs))
	for j, l := range libs {
		out[j] = FunctionLibrary(l)
	}
	return out, err
}

// DeleteOldFunctions deletes every library of the bus but this build's (run
// it once no process of an older release runs) and returns their names.
func (i *Inspector) DeleteOldFunctions(ctx context.Context) ([]string, error) {
	return i.port.DeleteOldFunctions(ctx)
}
