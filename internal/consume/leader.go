package consume

import (
	"context"
	"encoding/json"
	"errors"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetjob/jetjob/internal/jsapi"
)

// MsgGetSubject is the subject of stream's message get, under js's API
// prefix (a domain's, through a leaf node): computed once, by the reader
// that is made, not on each question.
func MsgGetSubject(js jetstream.JetStream, stream string) string {
	return jsapi.Prefix(js) + "STREAM.MSG.GET." + stream
}

// LastSeqOnLeader returns the sequence of the last message on subject in
// a stream, 0 when there is none, as the stream's leader holds it: unlike
// a direct get, which any replica may answer (one that has not caught up
// answers with less), a message get is answered by the leader only.
// msgGet is the stream's message get subject, MsgGetSubject's.
func LastSeqOnLeader(ctx context.Context, nc *nats.Conn, msgGet, subject string) (uint64, error) {
	req, _ := json.Marshal(struct {
		LastFor string `json:"last_by_subj"`
	}{subject})
	m, err := nc.RequestWithContext(ctx, msgGet, req)
	if err != nil {
		return 0, err
	}
	var resp struct {
		Message *struct {
			Seq uint64 `json:"seq"`
		} `json:"message"`
		Error *jetstream.APIError `json:"error"`
	}
	if err := json.Unmarshal(m.Data, &resp); err != nil {
		return 0, err
	}
	switch {
	case resp.Error != nil && resp.Error.ErrorCode == jetstream.JSErrCodeMessageNotFound:
		return 0, nil
	case resp.Error != nil:
		return 0, resp.Error
	case resp.Message == nil:
		return 0, errors.New("the stream answered without a message")
	}
	return resp.Message.Seq, nil
}
