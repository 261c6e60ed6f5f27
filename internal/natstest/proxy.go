package natstest

import (
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Proxy relays TCP connections to a server, and can cut them (drop every
// connection, open or new) or stall them (hold every byte, or only the
// server's, with the connections left open, as a partition that drops
// packets does, until Restore delivers them).
type Proxy struct {
	URL string

	ln      net.Listener
	target  string
	mu      sync.Mutex
	resumed *sync.Cond
	cut     bool
	stalled bool
	// answersStalled holds the server's bytes only: what clients send
	// is done, and they hear nothing of it.
	answersStalled bool
	// answersDelay holds each read of the server's bytes this long, as a
	// server a round trip away does: a client that waits for each answer
	// before its next request pays it each time.
	answersDelay time.Duration
	holding      int // relays holding bytes in a stall
	conns        map[net.Conn]bool
}

// NewProxy relays to the server at url (nats://host:port); the test's
// cleanup closes it.
func NewProxy(t testing.TB, url string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &Proxy{URL: "nats://" + ln.Addr().String(), ln: ln, target: hostPort(url), conns: map[net.Conn]bool{}}
	p.resumed = sync.NewCond(&p.mu)
	t.Cleanup(p.close)
	go p.accept()
	return p
}

func hostPort(url string) string {
	return strings.TrimPrefix(strings.TrimPrefix(url, "nats://"), "tls://")
}

// Cut drops every connection and refuses new ones until Restore.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	for c := range p.conns {
		_ = c.Close()
	}
}

// Stall holds every byte in both directions until Restore.
func (p *Proxy) Stall() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stalled = true
}

// StallAnswers holds every byte the server sends until Restore: requests
// reach it and are done, their answers held (and lost if the connection is
// then cut).
func (p *Proxy) StallAnswers() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.answersStalled = true
}

// DelayAnswers holds each read of the server's bytes for d before it is
// passed on, until Restore.
func (p *Proxy) DelayAnswers(d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.answersDelay = d
}

// Restore lets connections and bytes through again, at once.
func (p *Proxy) Restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut, p.stalled, p.answersStalled, p.answersDelay = false, false, false, 0
	p.resumed.Broadcast()
}

// close stops accepting, drops every connection and frees relays waiting
// out a stall.
func (p *Proxy) close() {
	_ = p.ln.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut, p.stalled, p.answersStalled = true, false, false
	for c := range p.conns {
		_ = c.Close()
	}
	p.resumed.Broadcast()
}

// Holding reports whether a stall holds bytes sent since it began: a
// request is then on its way, and lost if the connection is cut.
func (p *Proxy) Holding() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.holding > 0
}

// waitUnstalled returns when bytes may pass, answers the server's.
func (p *Proxy) waitUnstalled(answers bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if delay := p.answersDelay; answers && delay > 0 {
		p.mu.Unlock()
		time.Sleep(delay) // the latency a test asked for, not a wait for an event
		p.mu.Lock()
	}
	held := func() bool { return p.stalled || answers && p.answersStalled }
	if !held() {
		return
	}
	p.holding++
	for held() {
		p.resumed.Wait()
	}
	p.holding--
}

func (p *Proxy) accept() {
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		go p.relay(client)
	}
}

func (p *Proxy) relay(client net.Conn) {
	server, err := net.Dial("tcp", p.target)
	if err != nil {
		_ = client.Close()
		return
	}
	if !p.track(client, server) {
		_ = client.Close()
		_ = server.Close()
		return
	}
	var wg sync.WaitGroup
	wg.Add(2)
	pipe := func(dst, src net.Conn, answers bool) {
		defer wg.Done()
		// One side closed: close both, so the other copy ends too.
		defer dst.Close()
		defer src.Close()
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				p.waitUnstalled(answers)
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}
	go pipe(server, client, false)
	go pipe(client, server, true)
	wg.Wait()
	p.mu.Lock()
	delete(p.conns, client)
	delete(p.conns, server)
	p.mu.Unlock()
}

func (p *Proxy) track(conns ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cut {
		return false
	}
	for _, c := range conns {
		p.conns[c] = true
	}
	return true
}
