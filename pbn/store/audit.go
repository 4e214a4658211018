package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"
)

// Event is one entry of the audit trail. The trail is append-only: the
// store's API has no way to change or remove an event, and both databases
// refuse UPDATE and DELETE on it with a trigger.
type Event struct {
	// Seq orders the trail; it grows with every event, across every pbnd
	// sharing the database.
	Seq  int64     `json:"seq"`
	Time time.Time `json:"time"`
	// Kind names what happened: "enroll", "unlock", "claim", "revoke",
	// "recovery", "device-state", "policy" and others.
	Kind string `json:"kind"`
	// Device is the device concerned, in hex; empty when none is.
	Device string `json:"device,omitempty"`
	// Actor is who did it: "device", an administrator's name, or a user's
	// UPN.
	Actor string `json:"actor"`
	// Remote is the client's network address.
	Remote string `json:"remote,omitempty"`
	// Detail holds what else matters to the event (a reason, a binding).
	// It never holds a secret.
	Detail map[string]string `json:"detail,omitempty"`
}

// Append adds e to the audit trail, stamped with the current time, and
// returns it with its Seq and Time once it is durable. When ctx ends
// first, Append returns ctx's error and the event may still be written.
func (s *Store) Append(ctx context.Context, e Event) (Event, error) {
	e.Time = s.now().UTC()
	detail, err := json.Marshal(e.Detail)
	if err != nil {
		return e, fmt.Errorf("store: audit %s: %w", e.Kind, err)
	}
	if s.appends == nil {
		err = s.queryRow(ctx, insertEvent, eventArgs(e, detail)...).Scan(&e.Seq)
	} else {
		err = s.queueAppend(ctx, &e, detail)
	}
	if err != nil {
		return e, fmt.Errorf("store: audit %s: %w", e.Kind, err)
	}
	return e, nil
}

const insertEvent = `INSERT INTO audit (at, kind, device_id, actor, remote, detail)
	VALUES ($1, $2, $3, $4, $5, $6) RETURNING seq`

func eventArgs(e Event, detail []byte) []any {
	return []any{stamp(e.Time), e.Kind, e.Device, e.Actor, e.Remote, string(detail)}
}

// Bounds of a batch of audit events.
const (
	// appendBatch is how many events at most share one transaction.
	appendBatch = 256
	// appendTimeout bounds writing one batch.
	appendTimeout = 10 * time.Second
)

// appendReq is an Append waiting for the batcher.
type appendReq struct {
	e      *Event
	detail []byte
	done   chan error // buffered: the batcher never waits on it
}

// queueAppend hands e to the batcher and waits for its commit.
func (s *Store) queueAppend(ctx context.Context, e *Event, detail []byte) error {
	r := &appendReq{e: e, detail: detail, done: make(chan error, 1)}
	select {
	case s.appends <- r:
	case <-s.closing:
		return errClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-r.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// errClosed is Append's error after Close.
var errClosed = errors.New("the store is closed")

// batchAppends writes the events that Appends hand over, until Close.
// SQLite syncs its log at every commit (synchronous FULL) and has one
// writer, so one event per transaction would cost one disk sync each:
// the events that arrive while a batch commits go together in the next
// transaction and share its sync, and each Append still returns only
// after its own event is durable.
func (s *Store) batchAppends() {
	defer close(s.batcherDone)
	for {
		var batch []*appendReq
		select {
		case r := <-s.appends:
			batch = append(batch, r)
		case <-s.closing:
			return
		}
	more:
		for len(batch) < appendBatch {
			select {
			case r := <-s.appends:
				batch = append(batch, r)
			default:
				break more
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), appendTimeout)
		err := s.tx(ctx, func(tx *sql.Tx) error {
			for _, r := range batch {
				if err := tx.QueryRowContext(ctx, insertEvent, eventArgs(*r.e, r.detail)...).Scan(&r.e.Seq); err != nil {
					return err
				}
			}
			return nil
		})
		cancel()
		for _, r := range batch {
			r.done <- err
		}
	}
}

// Events returns up to limit events with a Seq above after, oldest first.
func (s *Store) Events(ctx context.Context, after int64, limit int) ([]Event, error) {
	return s.events(ctx, `SELECT seq, at, kind, device_id, actor, remote, detail FROM audit
		WHERE seq > $1 ORDER BY seq LIMIT $2`, after, limit)
}

// Tail returns the last n events, oldest first.
func (s *Store) Tail(ctx context.Context, n int) ([]Event, error) {
	es, err := s.events(ctx, `SELECT seq, at, kind, device_id, actor, remote, detail FROM audit
		ORDER BY seq DESC LIMIT $1`, n)
	slices.Reverse(es)
	return es, err
}

func (s *Store) events(ctx context.Context, q string, args ...any) ([]Event, error) {
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("store: audit trail: %w", err)
	}
	defer rows.Close()
	var es []Event
	for rows.Next() {
		var e Event
		var at int64
		var detail string
		if err := rows.Scan(&e.Seq, &at, &e.Kind, &e.Device, &e.Actor, &e.Remote, &detail); err != nil {
			return nil, fmt.Errorf("store: audit trail: %w", err)
		}
		e.Time = unstamp(at)
		if err := json.Unmarshal([]byte(detail), &e.Detail); err != nil {
			return nil, fmt.Errorf("store: audit trail: event %d: %w", e.Seq, err)
		}
		es = append(es, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: audit trail: %w", err)
	}
	return es, nil
}
