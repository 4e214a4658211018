package main

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestImageBuildUsage checks the flag errors of pbnctl image build, which
// stop before any build. The build itself is tested in package initramfs.
func TestImageBuildUsage(t *testing.T) {
	dir := t.TempDir()
	conf := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	unpinned := conf("unpinned.conf", `{"version": 1, "ad": {"domain": "corp.example.test"}}`)
	typo := conf("typo.conf", `{"version": 1, "autobot": {}}`)
	tests := []struct {
		name string
		args []string
		want int
	}{
		{"no subcommand", []string{"image"}, exitUsage},
		{"unknown subcommand", []string{"image", "make"}, exitUsage},
		{"help", []string{"image", "-h"}, exitOK},
		{"file without destination", []string{"image", "build", "-file", "/etc/hostname"}, exitUsage},
		{"stray argument", []string{"image", "build", "extra"}, exitUsage},
		{"pxe url without pxe", []string{"image", "build", "-pxe-url", "http://10.99.0.1/"}, exitUsage},
		{"unknown flag", []string{"image", "build", "-bogus"}, exitUsage},
		{"domain without a key server pin", []string{"image", "build", "-config", unpinned, "-o", "/dev/null"}, exitUsage},
		{"configuration that does not parse", []string{"image", "build", "-config", typo, "-o", "/dev/null"}, exitUsage},
		{"unknown compression", []string{"image", "build", "-compress", "lzma", "-o", "/dev/null"}, exitError},
		{"kernel not installed", []string{"image", "build", "-kernel", "0.0.0-none", "-o", "/dev/null"}, exitNoKernel},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			err := run(context.Background(), stdio{strings.NewReader(""), &out, &errOut, slog.New(slog.DiscardHandler)}, tt.args)
			if got := report(&errOut, err); got != tt.want {
				t.Errorf("pbnctl %s = exit %d (%v), want %d", strings.Join(tt.args, " "), got, err, tt.want)
			}
		})
	}
}
