package redistest

import (
	"context"
	"os"
	"testing"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/internal/redisx"
)

// Secure reports whether the suite runs in secure mode (SecureEnv).
func Secure() bool { return os.Getenv(SecureEnv) == "1" }

// rolePassword is the password of every role user in secure mode.
const rolePassword = "role-pw"

// startSecure starts a TLS-only server requiring client certificates and
// creates one ACL user per role with the rule bus-worker acl prints.
func startSecure(tb testing.TB, extra ...string) *Server {
	tb.Helper()
	s := StartTLS(tb, NewTLSFiles(tb), "yes", extra...)
	c := Connect(tb, s.Config())
	for _, role := range redisx.ACLRoles {
		rule, err := redisx.ACLRule(redisx.ACLSpec{Role: role, Prefix: bus.DefaultPrefix, User: "myc-" + role})
		if err != nil {
			tb.Fatal(err)
		}
		args := append(append([]string{"myc-" + role}, rule...), ">"+rolePassword)
		rc := c.Redis()
		if err := rc.Do(context.Background(), rc.B().Arbitrary("ACL", "SETUSER").Args(args...).Build()).Error(); err != nil {
			tb.Fatalf("ACL SETUSER myc-%s: %v", role, err)
		}
	}
	// The operator's step: the roles may run the bus's functions, not load
	// them.
	if err := redisx.LoadFunctions(context.Background(), c.Redis()); err != nil {
		tb.Fatalf("loading the bus's functions: %v", err)
	}
	return s
}

// RoleClient returns a client of the same server as c for role (producer,
// worker, operator): in secure mode a new connection as that role's ACL
// user over mutual TLS, otherwise c itself. The integration helpers give
// producers and consumers their role's client, so the secure suite proves
// the documented rules sufficient.
func RoleClient(tb testing.TB, c *bus.Client, role string) *bus.Client {
	tb.Helper()
	cfg := c.Config()
	if !Secure() || cfg.TLS == nil { // miniredis, or a server a test started its own way
		return c
	}
	cfg.Username, cfg.Password = "myc-"+role, rolePassword
	return Connect(tb, cfg)
}
