package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/cmdline"
	"github.com/pbn-project/pbn/pbn/console"
	"github.com/pbn-project/pbn/pbn/disk"
	"github.com/pbn-project/pbn/pbn/imaging"
	"github.com/pbn-project/pbn/pbn/provisioning"
	"github.com/pbn-project/pbn/pbn/stage"
)

func TestSentence(t *testing.T) {
	_, cmdErr := cmdline.Parse("pbn.onfail=shell")
	tests := []struct {
		err  error
		want string
	}{
		{&stage.StepError{Step: "unlock", Err: fmt.Errorf("unlock with password: %w", console.ErrTooManyTries)},
			"Too many wrong passwords"},
		{&stage.StepError{Step: "keyfiles", Err: errors.Join(disk.ErrNoKeyFiles, keyfile.ErrDamaged)},
			"damaged"},
		{&stage.StepError{Step: "keyfiles", Err: &disk.NotFoundError{What: "the EFI system partition"}},
			"The disk could not be found (the EFI system partition)"},
		{cmdErr, `The boot parameter "pbn.onfail=shell" is not valid`},
		{&stage.StepError{Step: "disk", Err: fmt.Errorf("open /dev/vda2: %w", disk.ErrWrongKey)},
			"does not open this computer's disk"},
		{&stage.StepError{Step: "unlock", Err: fmt.Errorf("%w: 10 sign-ins failed", provisioning.ErrNoSignIn)},
			"No one could sign in"},
		{&stage.StepError{Step: "unlock", Err: fmt.Errorf("%w: %w", errNoTPM, context.DeadlineExceeded)},
			"security chip (TPM) cannot be found"},
		{errors.New("mount proc on /proc: operation not permitted"), "The computer could not start."},
		{&stage.StepError{Step: "target", Err: &imaging.RefusedError{What: "an ext4 file system"}},
			"This computer's disk holds an ext4 file system. It was left as it is"},
		{&stage.StepError{Step: "payload", Err: &imaging.HTTPError{URL: "https://img.lab/os.img", Status: "404 Not Found"}},
			"The imaging server did not send https://img.lab/os.img (404 Not Found)"},
		{&stage.StepError{Step: "payload", Err: fmt.Errorf("imaging: fetching x: %w", imaging.ErrTooLarge)},
			"larger than this computer's disk"},
	}
	for _, tt := range tests {
		got := sentence(tt.err)
		if !strings.Contains(got, tt.want) || !strings.HasSuffix(got, ".") {
			t.Errorf("sentence(%v) = %q, want a sentence with %q", tt.err, got, tt.want)
		}
		if strings.Contains(got, "operation not permitted") || strings.Contains(got, "/dev/") {
			t.Errorf("sentence(%v) = %q shows the error's details", tt.err, got)
		}
	}
}
