package imaging

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"
)

// DefaultProgressEvery is how often Fetch reports its progress.
const DefaultProgressEvery = time.Second

// Progress is how far a transfer got.
type Progress struct {
	// Done is how many bytes were written; Total how many the server
	// announced, -1 when it did not.
	Done, Total int64
	// Elapsed is the time since the request.
	Elapsed time.Duration
}

// Rate is the mean transfer rate in bytes a second.
func (p Progress) Rate() float64 {
	if p.Elapsed <= 0 {
		return 0
	}
	return float64(p.Done) / p.Elapsed.Seconds()
}

// String says the progress for the console: "12.0 of 40.0 MiB, 5.3 MiB/s".
func (p Progress) String() string {
	const m = 1 << 20
	of := ""
	if p.Total >= 0 {
		of = fmt.Sprintf(" of %.1f", float64(p.Total)/m)
	}
	return fmt.Sprintf("%.1f%s MiB, %.1f MiB/s", float64(p.Done)/m, of, p.Rate()/m)
}

// ErrTooLarge says a payload does not fit where it goes. [Fetch] returns it.
var ErrTooLarge = errors.New("the payload is larger than its destination")

// HTTPError says the server answered a fetch with a status other than 200
// OK. [Fetch] returns it.
type HTTPError struct {
	URL    string
	Status string
}

func (e *HTTPError) Error() string { return fmt.Sprintf("imaging: fetching %s: %s", e.URL, e.Status) }

// Sentence returns the console's line.
func (e *HTTPError) Sentence() string {
	return fmt.Sprintf("The imaging server did not send %s (%s). Ask your administrator for help.",
		e.URL, e.Status)
}

// Fetch writes the body of a GET of url to w, at most limit bytes (limit
// 0: no limit), and calls report with the progress every every
// (DefaultProgressEvery when 0) and once at the end. It returns the final
// progress. A body longer than limit, or announced so, is ErrTooLarge;
// a body shorter than the Content-Length the server announced is an error
// (net/http's io.ErrUnexpectedEOF). The client must bound the time with
// ctx or its own timeouts: a payload of gigabytes takes minutes.
func Fetch(ctx context.Context, client *http.Client, url string, w io.Writer, limit int64,
	every time.Duration, report func(Progress)) (Progress, error) {
	start := time.Now()
	p := Progress{Total: -1}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return p, fmt.Errorf("imaging: fetching %s: %w", url, err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return p, fmt.Errorf("imaging: fetching %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return p, &HTTPError{URL: url, Status: resp.Status}
	}
	p.Total = resp.ContentLength
	if limit > 0 && p.Total > limit {
		return p, fmt.Errorf("imaging: fetching %s: %w (%d bytes, room for %d)", url, ErrTooLarge, p.Total, limit)
	}

	body := io.Reader(resp.Body)
	if limit > 0 {
		body = io.LimitReader(resp.Body, limit+1)
	}
	if every <= 0 {
		every = DefaultProgressEvery
	}
	buf := make([]byte, 1<<20)
	next := start.Add(every)
	for {
		n, rerr := body.Read(buf)
		if limit > 0 && p.Done+int64(n) > limit {
			return p, fmt.Errorf("imaging: fetching %s: %w (room for %d bytes)", url, ErrTooLarge, limit)
		}
		if n > 0 {
			if _, err := w.Write(buf[:n]); err != nil {
				return p, fmt.Errorf("imaging: writing %s: %w", url, err)
			}
			p.Done += int64(n)
		}
		if now := time.Now(); now.After(next) && report != nil {
			p.Elapsed = now.Sub(start)
			report(p)
			next = now.Add(every)
		}
		if errors.Is(rerr, io.EOF) {
			break
		}
		if rerr != nil {
			return p, fmt.Errorf("imaging: fetching %s: %w", url, rerr)
		}
	}
	p.Elapsed = time.Since(start)
	if report != nil {
		report(p)
	}
	return p, nil
}
