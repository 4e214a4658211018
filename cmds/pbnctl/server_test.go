package main

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/keyserver"
	"github.com/pbn-project/pbn/pbn/secret"
	"github.com/pbn-project/pbn/pbn/store"
)

// keyServer starts a key server on loopback with an SQLite store and
// returns the path of its administrator file, the store, and the
// administrator's client.
func keyServer(t *testing.T) (string, *store.Store, *keyserver.Client) {
	t.Helper()
	return keyServerWith(t, nil)
}

// keyServerWith is keyServer with directory checking claims.
func keyServerWith(t *testing.T, directory keyserver.Directory) (string, *store.Store, *keyserver.Client) {
	t.Helper()
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	st, err := store.Open(ctx, filepath.Join(dir, "pbnd.db"), secret.Random(store.MasterKeySize), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "https://" + ln.Addr().String()
	tlsKey, _ := keyserver.NewKey()
	srv, err := keyserver.New(keyserver.Config{Store: st, Key: tlsKey, URL: url, Directory: directory})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() { cancel(); <-done; st.Close() })

	a := &keyserver.AdminFile{Name: "helpdesk-1", URL: url, ServerKey: srv.PublicKey()}
	a.Key, _ = keyserver.NewKey()
	spki, _ := keyserver.PublicKey(a.Key)
	if err := st.AddAdmin(ctx, a.Name, spki); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "admin.json")
	if err := keyserver.WriteAdminFile(path, a); err != nil {
		t.Fatal(err)
	}
	c, err := a.Client()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.CloseIdleConnections)
	return path, st, c
}

func TestServerCommands(t *testing.T) {
	admin, st, c := keyServer(t)
	ctx := t.Context()
	dev := keyfile.NewID()
	k, _ := keyserver.NewKey()
	spki, _ := keyserver.PublicKey(k)
	if _, err := c.Enroll(ctx, store.Device{ID: dev, Hostname: "laptop-7", Group: "laptops",
		Key: spki}, keyfile.NewID()); err != nil {
		t.Fatal(err)
	}
	kf := keyfile.NewID()
	if err := st.PutEscrow(ctx, store.Escrow{DeviceID: dev, KeyFileID: kf, UPN: "alice@example.test",
		Key: secret.Bytes("111111-222222-333333")}); err != nil {
		t.Fatal(err)
	}
	stranger := filepath.Join(t.TempDir(), "stranger.json")
	a, _ := keyserver.ReadAdminFile(admin)
	a.Key, _ = keyserver.NewKey()
	if err := keyserver.WriteAdminFile(stranger, a); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"list", []string{"device", "list"}, 0, "laptop-7"},
		{"show by hostname", []string{"device", "show", "laptop-7"}, 0, "state:    active"},
		{"show by ID", []string{"device", "show", "--json", dev.String()}, 0, `"Hostname": "laptop-7"`},
		{"show unknown", []string{"device", "show", "laptop-8"}, exitNoDevice, "no device"},
		{"show unknown ID", []string{"device", "show", keyfile.NewID().String()}, exitNoDevice, "no such"},
		{"lost without reason", []string{"device", "lost", "laptop-7"}, exitUsage, "--reason"},
		{"lost", []string{"device", "lost", "--reason", "left on a train", "laptop-7"}, 0, "now lost"},
		{"show lost", []string{"device", "show", "laptop-7"}, 0, "state:    lost"},
		{"recovery without reason", []string{"recovery", "show", "laptop-7"}, exitUsage, "--reason"},
		{"recovery", []string{"recovery", "show", "--reason", "ticket 7", "laptop-7"}, 0, "111111-222222-333333"},
		{"policy set", []string{"policy", "set", "--users", "3", "--pcrs", "7,11", "laptops"}, 0, "set"},
		{"policy show", []string{"policy", "show", "laptops"}, 0, "PCRs:             7,11"},
		{"policy set bad", []string{"policy", "set", "--pcrs", "", "laptops"}, exitUsage, "PCR"},
		{"audit tail", []string{"audit", "tail", "-n", "2"}, 0, `reason="ticket 7"`},
		{"not an administrator", []string{"device", "list", "--admin", stranger}, exitNotAdmin, "administrator"},
		{"unreachable", []string{"device", "list", "--server", "https://127.0.0.1:1"}, exitUnreachable, "reached"},
		{"no subcommand", []string{"device"}, exitUsage, "subcommands"},
		{"help", []string{"audit", "-h"}, 0, "exit codes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := tt.args
			if len(args) > 2 || len(args) == 2 && !strings.HasPrefix(args[1], "-") {
				// COMMAND SUBCOMMAND --admin FILE [the rest]
				args = append([]string{args[0], args[1], "--admin", admin}, args[2:]...)
			}
			out, code := pbnctl(t, "", args...)
			if code != tt.code || !strings.Contains(out, tt.want) {
				t.Errorf("pbnctl %q = %d:\n%s\nwant %d with %q", args, code, out, tt.code, tt.want)
			}
		})
	}

	for _, args := range [][]string{{}, {"--page", "1"}, {"--page", "3"}, {"--after", "1", "--page", "2"}} {
		want := "enroll device-state recovery policy"
		if slices.Contains(args, "--after") {
			want = "device-state recovery policy"
		}
		args = append([]string{"audit", "export", "--admin", admin}, args...)
		out, code := pbnctl(t, "", args...)
		if code != 0 {
			t.Fatalf("pbnctl %q = %d: %s", args, code, out)
		}
		var kinds []string
		sc := bufio.NewScanner(strings.NewReader(out))
		for sc.Scan() {
			var e store.Event
			if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
				t.Fatalf("pbnctl %q line %q: %v", args, sc.Text(), err)
			}
			kinds = append(kinds, e.Kind)
		}
		if got := strings.Join(kinds, " "); got != want {
			t.Errorf("pbnctl %q kinds %q, want %q", args, got, want)
		}
	}
}
