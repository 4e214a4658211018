package securemoment

import (
	"errors"
	"fmt"

	"github.com/pbn-project/pbn/pbn/ad"
	"github.com/pbn-project/pbn/pbn/keyserver"
	"github.com/pbn-project/pbn/pbn/tpm"
)

// Step is one step of the secure moment, in the order Run takes them.
type Step int

// The steps of the secure moment (see the package documentation).
const (
	StepAuthenticate Step = iota + 1
	StepClaim
	StepMakeKeyFile
	StepStore
	StepKeyslot
	StepKillProvisioning
	StepRevoke
	StepRemoveProvisioning
)

// Steps lists every step, in order.
var Steps = []Step{StepAuthenticate, StepClaim, StepMakeKeyFile, StepStore, StepKeyslot,
	StepKillProvisioning, StepRevoke, StepRemoveProvisioning}

var stepNames = map[Step]string{
	StepAuthenticate:       "authenticate",
	StepClaim:              "claim",
	StepMakeKeyFile:        "make key file",
	StepStore:              "store key file",
	StepKeyslot:            "add keyslot",
	StepKillProvisioning:   "kill provisioning keyslot",
	StepRevoke:             "revoke provisioning binding",
	StepRemoveProvisioning: "remove provisioning key file",
}

func (s Step) String() string {
	if n, ok := stepNames[s]; ok {
		return n
	}
	return fmt.Sprintf("step %d", int(s))
}

// StepError is the error of Run: the step that failed and why. The cause
// is the directory's *ad.Error, the key server's refusal
// (keyserver.ErrLoginRefused and its other sentinels), the TPM's errors,
// a key file's or disk.ErrWrongKey, as the step's package returned it.
type StepError struct {
	Step Step
	Err  error
}

func (e *StepError) Error() string { return "secure moment: " + e.Step.String() + ": " + e.Err.Error() }

// Unwrap returns the cause.
func (e *StepError) Unwrap() error { return e.Err }

// Sentence returns what to tell the person at the prompt.
func (e *StepError) Sentence() string {
	var ae *ad.Error
	switch {
	case errors.As(e.Err, &ae):
		return ae.Sentence()
	case errors.Is(e.Err, ErrNotProvisioned):
		return "This device is not prepared for a first sign-in. Contact the help desk."
	case e.Step == StepClaim || e.Step == StepRevoke:
		return keyserver.Sentence(e.Err)
	}
	if s := tpm.Prompt(e.Err); s != "" {
		return s
	}
	if e.Step < StepKeyslot {
		return "Your device could not be set up for you. It starts as before; try again, " +
			"or contact the help desk."
	}
	return "Your device was set up for you, but the set-up did not finish. Sign in again " +
		"at the next start to finish it."
}

// Sentence returns what to tell the person at the prompt about an error
// of Run.
func Sentence(err error) string {
	var se *StepError
	if errors.As(err, &se) {
		return se.Sentence()
	}
	return "Your device could not be set up for you. Contact the help desk."
}
