package main

import (
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/term"

	"github.com/pbn-project/pbn/pbn/secret"
)

// maxSecretLine bounds a password or recovery key read from stdin.
const maxSecretLine = 4096

// readSecretLine reads one line from r, a byte at a time so that a later
// call reads the next line, without its line ending.
func readSecretLine(r io.Reader) (secret.Bytes, error) {
	var line secret.Bytes
	var c [1]byte
	for {
		n, err := r.Read(c[:])
		if n == 1 {
			if c[0] == '\n' {
				break
			}
			if len(line) == maxSecretLine {
				line.Wipe()
				return nil, fmt.Errorf("line longer than %d bytes", maxSecretLine)
			}
			line = append(line, c[0])
		}
		if err == io.EOF && len(line) > 0 {
			break
		}
		if err != nil {
			line.Wipe()
			if err == io.EOF {
				return nil, errors.New("nothing on standard input")
			}
			return nil, err
		}
	}
	if len(line) > 0 && line[len(line)-1] == '\r' {
		line = line[:len(line)-1]
	}
	return line, nil
}

// secretReader reads the secrets a command needs: from standard input, a
// line each, or from the terminal without echo.
type secretReader struct {
	stdin bool
	io    stdio
}

// read returns the next secret, prompting with prompt at the terminal. A
// new secret typed at the terminal is asked for twice.
func (s secretReader) read(prompt string, isNew bool) (secret.Bytes, error) {
	if s.stdin {
		b, err := readSecretLine(s.io.in)
		if err != nil {
			return nil, fmt.Errorf("read %s from standard input: %w", prompt, err)
		}
		return b, nil
	}
	tty, err := os.OpenFile("/dev/tty", os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("no terminal to read the %s from (use --password-stdin): %w", prompt, err)
	}
	defer tty.Close()
	ask := func(p string) (secret.Bytes, error) {
		fmt.Fprintf(tty, "%s: ", p)
		b, err := term.ReadPassword(int(tty.Fd()))
		fmt.Fprintln(tty)
		return b, err
	}
	b, err := ask("Enter " + prompt)
	if err != nil || !isNew {
		return b, err
	}
	again, err := ask("Enter the " + prompt + " again")
	defer again.Wipe()
	if err != nil {
		b.Wipe()
		return nil, err
	}
	if !b.Equal(again) {
		b.Wipe()
		return nil, fmt.Errorf("the two %ss differ", prompt)
	}
	return b, nil
}
