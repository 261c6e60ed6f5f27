package maintenance

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetjob/jetjob/internal/config"
	"github.com/jetjob/jetjob/internal/provision"
)

// Leadership defaults.
const (
	LeadersBucketDefault = "jj_leaders"
	LeaderTTLDefault     = 6 * time.Second
)

// Leadership holds one named role among every server sharing a NATS: the
// holder's key in a bucket whose values expire after the TTL; the holder
// renews it with a compare-and-set on its revision, so when its server dies
// the key expires and another server takes the role.
type Leadership struct {
	kv   jetstream.KeyValue
	role string
	id   string
	ttl  time.Duration

	mu  sync.Mutex
	rev uint64
}

// NewLeadership provisions the leaders bucket and contends for role as id,
// which must be unique to one contender: the role's key holding id is
// taken for this one's own (a renewal stored whose answer was lost).
// The TTL is the bucket's, shared by every role: the NewLeadership that
// makes the bucket sets it (ttl, or LeaderTTLDefault when 0), and later ones
// keep the bucket's whatever ttl they ask for, so that no contender's renewal
// falls behind an expiry another one set.
func NewLeadership(ctx context.Context, js jetstream.JetStream, role, id string, ttl time.Duration) (*Leadership, error) {
	if js == nil {
		return nil, fmt.Errorf("%w: no jetstream", ErrInvalidConfig)
	}
	// Said here, not at the first TryLead: the role names a key, and an
	// empty id would take any vacant key for its own.
	if !validKey(role) {
		return nil, fmt.Errorf("%w: leadership role %q, expected letters, digits and -_/= (dots between)", ErrInvalidConfig, role)
	}
	if id == "" {
		return nil, fmt.Errorf("%w: leadership contender id is empty", ErrInvalidConfig)
	}
	if err := config.Default(ErrInvalidConfig, "leadership ttl", &ttl, LeaderTTLDefault); err != nil {
		return nil, err
	}
	if existing, err := js.KeyValue(ctx, LeadersBucketDefault); err == nil {
		status, err := existing.Status(ctx)
		if err != nil {
			return nil, fmt.Errorf("read leaders bucket: %w", err)
		}
		if status.TTL() > 0 {
			ttl = status.TTL()
		}
	} else if !errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, fmt.Errorf("look up leaders bucket: %w", err)
	}
	kv, err := provision.KeyValue(ctx, js, provision.KeyValueConfig{Bucket: LeadersBucketDefault, TTL: ttl, AsyncPersist: true})
	if err != nil {
		return nil, err
	}
	return &Leadership{kv: kv, role: role, id: id, ttl: ttl}, nil
}

// TryLead takes or keeps the role and reports whether this process holds it.
// Call it more often than the TTL (every TTL/3) to keep the role.
func (l *Leadership) TryLead(ctx context.Context) (bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.rev != 0 {
		rev, err := l.kv.Update(ctx, l.role, []byte(l.id), l.rev)
		if err == nil {
			l.rev = rev
			return true, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) && !provision.IsNotFound(err) {
			// Unanswered (a pass's ctx ended, a timeout): the key may
			// still be this server's at l.rev, and the next try renews it.
			// Forgetting the revision would lock this server out of its
			// own key, and no server would lead until it expired.
			return false, fmt.Errorf("renew %s leadership: %w", l.role, err)
		}
		l.rev = 0 // taken over, or expired
	}
	rev, err := l.kv.Create(ctx, l.role, []byte(l.id))
	if errors.Is(err, jetstream.ErrKeyExists) {
		// This server's own key at a revision it did not hear of (a
		// renewal stored, its answer lost) is renewed at that revision;
		// else it would wait out its own key's TTL, with nobody leading.
		if e, gerr := l.kv.Get(ctx, l.role); gerr == nil && string(e.Value()) == l.id {
			if rev, err := l.kv.Update(ctx, l.role, []byte(l.id), e.Revision()); err == nil {
				l.rev = rev
				return true, nil
			}
		}
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("take %s leadership: %w", l.role, err)
	}
	l.rev = rev
	return true, nil
}

// Resign gives the role up at once, so another server need not wait the TTL.
func (l *Leadership) Resign(ctx context.Context) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.rev != 0 {
		_ = l.kv.Delete(ctx, l.role, jetstream.LastRevision(l.rev))
		l.rev = 0
	}
}

// validKey reports whether s can name a key of a NATS key-value bucket.
func validKey(s string) bool {
	if s == "" || strings.HasPrefix(s, ".") || strings.HasSuffix(s, ".") || strings.Contains(s, "..") {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_/=.", r)) {
			return false
		}
	}
	return true
}
