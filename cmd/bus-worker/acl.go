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

// aclCmd prints the least-privilege ACL SETUSER rule of a role, as a line
// redis-cli reads (arguments quoted where they hold spaces).
func aclCmd(_ context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("acl", flag.ContinueOnError)
	role := fs.String("role", "", "producer | worker | operator")
	prefix := fs.String("prefix", bus.DefaultPrefix, "key prefix")
	user := fs.String("user", "", "user name (default <prefix>-<role>); a producer's reply streams are named after it")
	topics := fs.String("topics", "", "comma-separated topics a producer or worker may use (default: every topic)")
	if _, err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := bus.ValidateName("prefix", *prefix); err != nil {
		return usagef("acl: --prefix: %v", err)
	}
	name := *user
	if name == "" {
		name = *prefix + "-" + *role
	}
	if strings.ContainsAny(name, " \t\n\"'") || name == "" {
		return usagef("acl: --user %q: no spaces or quotes", name)
	}
	spec := redisx.ACLSpec{Role: *role, Prefix: *prefix, User: name}
	if *topics != "" {
		if *role == "operator" {
			return usagef("acl: --topics: the operator role has every topic")
		}
		for _, t := range strings.Split(*topics, ",") {
			if err := bus.ValidateName("topic", t); err != nil {
				return usagef("acl: --topics: %v", err)
			}
			spec.Topics = append(spec.Topics, t)
		}
	}
	rule, err := redisx.ACLRule(spec)
	if err != nil {
		return usagef("acl: %v", err)
	}
	quoted := make([]string, len(rule))
	for i, a := range rule {
		quoted[i] = a
		if strings.ContainsAny(a, " \"") {
			quoted[i] = `"` + strings.ReplaceAll(a, `"`, `\"`) + `"`
		}
	}
	fmt.Fprintf(stdout, "ACL SETUSER %s %s\n", name, strings.Join(quoted, " "))
	fmt.Fprintf(stdout, "# then give it a password: ACL SETUSER %s >PASSWORD (or #<sha256 of it>); pass it with --redis-password-file\n", name)
	switch *role {
	case "producer":
		fmt.Fprintf(stdout, "# its reply streams are %s:{r.%s.<id>}: producers connect as %s (or set producer.Config.Owner)\n", *prefix, name, name)
		fallthrough
	case "worker":
		fmt.Fprintf(stdout, "# it runs the bus's functions and may not load them: the operator loads them once (bus-worker functions load)\n")
	}
	return nil
}
