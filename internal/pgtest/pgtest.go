// Package pgtest starts a real PostgreSQL server for tests: initdb and
// pg_ctl on a temporary directory, listening only on a unix socket in that
// directory, stopped and removed when the test ends.
package pgtest

import (
	"context"
	"database/sql"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" driver

	"github.com/pbn-project/pbn/internal/testenv"
)

// startTimeout bounds initdb and the server's start.
const startTimeout = 60 * time.Second

// Cluster is a running PostgreSQL server.
type Cluster struct {
	dir  string
	n    atomic.Int64
	root *sql.DB
}

// Start starts a PostgreSQL server for the test and stops it on cleanup.
// It skips or fails t (see testenv) when PostgreSQL is not installed. As
// root, the server runs as the postgres user: initdb refuses root.
func Start(t testing.TB) *Cluster {
	t.Helper()
	bin := binDir(t)
	dir, err := os.MkdirTemp("", "pbn-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	as := owner(t, dir)

	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	data := filepath.Join(dir, "data")
	run(ctx, t, as, filepath.Join(bin, "initdb"), "-D", data, "-U", "postgres",
		"-A", "trust", "--no-sync", "-E", "UTF8")
	opts := "-c listen_addresses='' -c unix_socket_directories=" + dir + " -c fsync=off"
	run(ctx, t, as, filepath.Join(bin, "pg_ctl"), "-D", data, "-w", "-t", "60",
		"-l", filepath.Join(dir, "log"), "-o", opts, "start")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
		defer cancel()
		run(ctx, t, as, filepath.Join(bin, "pg_ctl"), "-D", data, "-w", "-m", "fast", "stop")
	})

	c := &Cluster{dir: dir}
	c.root, err = sql.Open("pgx", c.dsn("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.root.Close() })
	return c
}

func (c *Cluster) dsn(db string) string {
	return "postgres:///" + db + "?host=" + c.dir + "&user=postgres&sslmode=disable"
}

// NewDatabase creates an empty database and returns its DSN.
func (c *Cluster) NewDatabase(t *testing.T) string {
	t.Helper()
	name := "t" + strconv.FormatInt(c.n.Add(1), 10)
	if _, err := c.root.Exec("CREATE DATABASE " + name); err != nil {
		t.Fatalf("create database %s: %v", name, err)
	}
	return c.dsn(name)
}

// binDir finds Debian's PostgreSQL programs, the newest version first.
func binDir(t testing.TB) string {
	t.Helper()
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Sort(sort.Reverse(sort.StringSlice(dirs)))
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d
		}
	}
	return filepath.Dir(testenv.Command(t, "initdb"))
}

// owner hands dir to the postgres user when the test runs as root, and
// returns the user to run PostgreSQL as ("" for the test's own).
func owner(t testing.TB, dir string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		return ""
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		t.Fatalf("postgres user: %v (Debian's postgresql package makes it)", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if err := os.Chown(dir, uid, gid); err != nil {
		t.Fatal(err)
	}
	return u.Username
}

func run(ctx context.Context, t testing.TB, as, prog string, args ...string) {
	t.Helper()
	name := filepath.Base(prog)
	if as != "" {
		args = append([]string{"-u", as, "--", prog}, args...)
		prog = testenv.Command(t, "runuser")
	}
	cmd := exec.CommandContext(ctx, prog, args...)
	cmd.Dir = "/"
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", name, err, out)
	}
}
