package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/internal/redisx"
)

// aclCmd prints the least-privilege ACL SETUSER rule of a role.
func aclCmd(_ context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("acl", flag.ContinueOnError)
	role := fs.String("role", "", "producer | worker | operator")
	prefix := fs.String("prefix", bus.DefaultPrefix, "key prefix")
	user := fs.String("user", "", "user name (default myc-<role>)")
	if _, err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := bus.ValidateName("prefix", *prefix); err != nil {
		return usagef("acl: --prefix: %v", err)
	}
	rule, err := redisx.ACLRule(*role, *prefix)
	if err != nil {
		return usagef("acl: --role: %v", err)
	}
	name := *user
	if name == "" {
		name = "myc-" + *role
	}
	if strings.ContainsAny(name, " \t\n") || name == "" {
		return usagef("acl: --user %q: no spaces", name)
	}
	fmt.Fprintf(stdout, "ACL SETUSER %s %s\n", name, strings.Join(rule, " "))
	fmt.Fprintf(stdout, "# then give it a password: ACL SETUSER %s >PASSWORD (or #<sha256 of it>); pass it with --redis-password-file\n", name)
	return nil
}
