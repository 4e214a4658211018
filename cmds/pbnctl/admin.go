package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/pbn-project/pbn/pbn/keyserver"
	"github.com/pbn-project/pbn/pbn/store"
)

var adminHelp = `usage: pbnctl admin SUBCOMMAND [flags] [NAME]

subcommands:
  add --out FILE [--role ROLE] NAME   add an administrator; FILE is its file
  list                                list the administrators and their roles
  remove --reason TEXT NAME           remove an administrator: its file is
                                      refused from then on

add makes a new key here and writes the administrator file (the key
server's URL and pinned key, and the new key) to FILE, readable by its
owner only. The audit trail names NAME for everything done with FILE. An
administrator does not remove itself.

roles:
  admin    everything an administrator does (the default)
  enroll   enrolling devices only, as the imaging image does: put this
           one, not an admin's, in the image (config.ImagingAdminFile),
           since anyone who fetches the image from the PXE server has it
` + serverHelp

var runAdmin = subcommands("admin", adminHelp, []command{
	{"add", "", adminAdd},
	{"list", "", adminList},
	{"remove", "", adminRemove},
})

func adminAdd(ctx context.Context, io stdio, args []string) error {
	s := newServerFlags(io, "admin add", "--out FILE [--role ROLE] [flags] NAME")
	out := s.fl.String("out", "", "`file` to write the new administrator's file to (required; must not exist)")
	role := s.fl.String("role", string(store.RoleAdmin), "the new administrator's `role`: admin or enroll")
	if err := s.parse(args, 1); err != nil {
		return err
	}
	if *out == "" {
		return usageError("admin add: --out is required")
	}
	if err := store.AdminRole(*role).Check(); err != nil {
		return withCode(exitUsage, err)
	}
	a, err := s.adminFile()
	if err != nil {
		return err
	}
	c, err := a.Client()
	if err != nil {
		return withCode(exitUsage, err)
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()

	na, spki, err := newAdminFile(*out, s.fl.Arg(0), a)
	if err != nil {
		return err
	}
	if err := c.AddAdmin(ctx, na.Name, store.AdminRole(*role), spki); err != nil {
		return errors.Join(serverCode(err), os.Remove(*out))
	}
	fmt.Fprintf(io.out, "administrator %s (%s) added; its file is %s\n", na.Name, *role, *out)
	return nil
}

// newAdminFile makes a key for the administrator name and writes its file,
// with like's server, to the new file path. It returns the file and the
// key's DER SubjectPublicKeyInfo.
func newAdminFile(path, name string, like *keyserver.AdminFile) (*keyserver.AdminFile, []byte, error) {
	if _, err := os.Lstat(path); err == nil {
		return nil, nil, usageError("admin add: %s exists already", path)
	}
	k, err := keyserver.NewKey()
	if err != nil {
		return nil, nil, err
	}
	spki, err := keyserver.PublicKey(k)
	if err != nil {
		return nil, nil, err
	}
	a := &keyserver.AdminFile{Name: name, URL: like.URL, ServerKey: like.ServerKey, Key: k}
	if err := keyserver.WriteAdminFile(path, a); err != nil {
		return nil, nil, err
	}
	return a, spki, nil
}

func adminList(ctx context.Context, io stdio, args []string) error {
	s := newServerFlags(io, "admin list", "[flags]")
	if err := s.parse(args, 0); err != nil {
		return err
	}
	c, ctx, cancel, err := s.client(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	as, err := c.Admins(ctx)
	if err != nil {
		return serverCode(err)
	}
	tw := tabwriter.NewWriter(io.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tROLE\tADDED")
	for _, a := range as {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", a.Name, a.Role, a.Added.Format(time.RFC3339))
	}
	return tw.Flush()
}

func adminRemove(ctx context.Context, io stdio, args []string) error {
	s := newServerFlags(io, "admin remove", "--reason TEXT [flags] NAME")
	reason := s.reasonFlag()
	if err := s.parse(args, 1); err != nil {
		return err
	}
	if err := requireReason("admin remove", *reason); err != nil {
		return err
	}
	c, ctx, cancel, err := s.client(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	if err := c.RemoveAdmin(ctx, s.fl.Arg(0), *reason); err != nil {
		return serverCode(err)
	}
	fmt.Fprintf(io.out, "administrator %s removed\n", s.fl.Arg(0))
	return nil
}
