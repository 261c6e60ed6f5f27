package workers

import (
	"fmt"
	"strings"
	"sync"

	"github.com/nats-io/nats.go"
)

// wakeHub holds one connection's subscriptions to wake-ups, shared by every
// pool on that connection. The server then sends each wake-up to the
// connection once, not once per pool: with 32 pools of one type on one
// connection, a wake-up passed on to all cost 32 deliveries, each parsed,
// queued and handed to a goroutine of its own. And a shared wake-up is
// offered to the pools here in turn, where the server's queue group gave it
// to one at random, which passed it on to all when full.
type wakeHub struct {
	nc *nats.Conn
	// mu guards types and each type's pools, a slice replaced, never
	// changed in place, so that a delivery reads it once. Joins and leaves
	// also hold wakeHubs, so that two pools never both subscribe for one
	// type.
	mu    sync.Mutex
	types map[string]*hubType
}

type hubType struct {
	shared, all *nats.Subscription
	pools       []*Pool
	// next is where the next shared wake-up starts looking for a pool to
	// claim it, so that claims spread over the pools. Read and written only
	// by the handler of this hubType's shared subscription, which nats.go
	// calls serially: a type subscribed again gets a new hubType.
	next int
}

// wakeHubs holds a hub per connection with pools on it.
var wakeHubs = struct {
	sync.Mutex
	m map[*nats.Conn]*wakeHub
}{m: map[*nats.Conn]*wakeHub{}}

// joinWakeHub makes p hear the wake-ups of its types on its connection; the
// returned func stops it, and unsubscribes once no pool on the connection
// serves the type.
func joinWakeHub(p *Pool, types []string) (leave func(), err error) {
	wakeHubs.Lock()
	defer wakeHubs.Unlock()
	h := wakeHubs.m[p.nc]
	if h == nil {
		h = &wakeHub{nc: p.nc, types: map[string]*hubType{}}
		wakeHubs.m[p.nc] = h
	}
	var joined []string
	leaveLocked := func() {
		for _, t := range joined {
			h.leave(t, p)
		}
		joined = nil
		if h.empty() && wakeHubs.m[p.nc] == h {
			delete(wakeHubs.m, p.nc)
		}
	}
	for _, t := range types {
		if err := h.join(t, p); err != nil {
			leaveLocked()
			return nil, err
		}
		joined = append(joined, t)
	}
	return func() {
		wakeHubs.Lock()
		defer wakeHubs.Unlock()
		leaveLocked()
	}, nil
}

func (h *wakeHub) join(t string, p *Pool) error {
	h.mu.Lock()
	ht := h.types[t]
	if ht != nil {
		ht.pools = append(append([]*Pool(nil), ht.pools...), p)
		h.mu.Unlock()
		return nil
	}
	ht = &hubType{pools: []*Pool{p}}
	h.types[t] = ht
	h.mu.Unlock()
	// A wake-up goes to one connection of those with pools serving the
	// type, where one pool claims it, or it is passed on to every pool:
	// with every pool woken by every job, ten pools made ten fetches a
	// job, nine of them empty.
	var err error
	if ht.shared, err = h.nc.QueueSubscribe(wakePrefix+t+".>", wakeGroup, func(m *nats.Msg) { h.onShared(ht, m) }); err == nil {
		ht.all, err = h.nc.Subscribe(wakeAllPrefix+t+".>", func(m *nats.Msg) { h.onAll(ht, m) })
	}
	if err != nil {
		h.mu.Lock()
		delete(h.types, t)
		h.mu.Unlock()
		if ht.shared != nil {
			_ = ht.shared.Unsubscribe()
		}
		return fmt.Errorf("subscribe to wake-ups of %s: %w", t, err)
	}
	return nil
}

func (h *wakeHub) leave(t string, p *Pool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	ht := h.types[t]
	if ht == nil {
		return
	}
	var rest []*Pool
	for _, q := range ht.pools {
		if q != p {
			rest = append(rest, q)
		}
	}
	ht.pools = rest
	if len(rest) > 0 {
		return
	}
	delete(h.types, t)
	_ = ht.shared.Unsubscribe()
	_ = ht.all.Unsubscribe()
}

func (h *wakeHub) empty() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.types) == 0
}

func (h *wakeHub) pools(ht *hubType) []*Pool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return ht.pools
}

// onShared offers a shared wake-up to each pool in turn until one claims
// it (it serves the queue and has a slot free for it), and otherwise passes
// it on to every pool.
func (h *wakeHub) onShared(ht *hubType, m *nats.Msg) {
	name := strings.TrimPrefix(m.Subject, wakePrefix)
	pools := h.pools(ht)
	for i := range pools {
		j := (ht.next + i) % len(pools)
		if pools[j].claimWake(name) {
			ht.next = j + 1
			return
		}
	}
	// Every pool takes it, those on other connections too: one that does
	// not know the queue yet reads the registry.
	passOnWake(h.nc, name)
}

// onAll takes a wake-up passed on to every pool.
func (h *wakeHub) onAll(ht *hubType, m *nats.Msg) {
	name := strings.TrimPrefix(m.Subject, wakeAllPrefix)
	pools := h.pools(ht)
	for _, p := range pools {
		p.onWake(name)
	}
}

func passOnWake(nc *nats.Conn, name string) { _ = nc.Publish(wakeAllPrefix+name, nil) }
