package bench

import (
	"math"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/cio-relay/cio-relay/event"
)

// mix is the share of each call type in percent: what a product analytics
// feed typically looks like, tracks dominating.
var mix = [...]struct {
	typ event.Type
	pct int
}{
	{event.Track, 60},
	{event.Identify, 20},
	{event.Page, 10},
	{event.Screen, 5},
	{event.Group, 3},
	{event.Alias, 2},
}

// Body sizes: log-uniform between 200 B and 4 KB (median about 900 B, mean
// about 1.3 KB), and one call in a hundred log-uniform between 4 KB and
// 30 KB, the long tail that makes exact packing matter. 30 KB leaves room
// under event.MaxCallBytes for the "type" the worker inserts.
const (
	sizeMin      = 200
	sizeBody     = 4_000
	sizeTail     = 30_000
	tailPerCents = 1
)

var subjects = func() [len(mix)]string {
	var s [len(mix)]string
	for i, m := range mix {
		s[i] = m.typ.Subject()
	}
	return s
}()

var (
	trackEvents = []string{"Order Completed", "Product Viewed", "Signed Up", "Cart Updated", "Checkout Started", "Subscription Renewed"}
	pageNames   = []string{"Home", "Pricing", "Docs", "Blog", "Checkout"}
	screenNames = []string{"Dashboard", "Settings", "Inbox", "Profile"}
	words       = []string{"lorem", "ipsum", "dolor", "sit", "amet", "relay", "batch", "order", "green", "tea", "honey", "checkout", "customer", "journey", "segment"}
)

// Corpus is a kind of calls a generator makes.
type Corpus string

// The corpora.
const (
	// CorpusBench is the backlog's mix: 200 B–4 KB with a 1% tail to 30 KB.
	CorpusBench Corpus = "bench"
	// CorpusSmall is about 100-byte calls, the same mix of types: the case
	// where the call cap (2,000), not the 500,000-byte limit, closes a
	// batch, and the one a latency target must hold for too.
	CorpusSmall Corpus = "small"
	// CorpusHotKey is CorpusSmall with one person ("hot") making a fifth
	// of the calls (every fifth): with ordering, that person's calls share
	// one lane, and the other persons' latency shows whether it stalls
	// them.
	CorpusHotKey Corpus = "hotkey"
)

// hotCall reports whether call i of CorpusHotKey is the hot person's.
func hotCall(i int) bool { return i%5 == 0 }

// generator produces the bench's calls: deterministic for a seed, each
// with a messageId of idPrefix followed by its index.
type generator struct {
	rng      *rand.Rand
	small    bool // CorpusSmall or CorpusHotKey
	hot      bool // CorpusHotKey
	idPrefix string
	base     time.Time
	filler   []byte // ASCII text padding is cut from
}

func newGenerator(seed uint64, idPrefix string) *generator {
	return newCorpusGenerator(seed, idPrefix, CorpusBench)
}

func newCorpusGenerator(seed uint64, idPrefix string, c Corpus) *generator {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	filler := make([]byte, 0, 2*sizeTail+64)
	for len(filler) < 2*sizeTail {
		filler = append(filler, words[rng.IntN(len(words))]...)
		filler = append(filler, ' ')
	}
	return &generator{
		rng:      rng,
		small:    c == CorpusSmall || c == CorpusHotKey,
		hot:      c == CorpusHotKey,
		idPrefix: idPrefix,
		base:     time.Date(2026, 11, 29, 0, 0, 0, 0, time.UTC),
		filler:   filler,
	}
}

// size draws a body size.
func (g *generator) size() int {
	if g.rng.IntN(100) < tailPerCents {
		return g.logUniform(sizeBody, sizeTail)
	}
	return g.logUniform(sizeMin, sizeBody)
}

func (g *generator) logUniform(lo, hi int) int {
	return int(float64(lo) * math.Exp(g.rng.Float64()*math.Log(float64(hi)/float64(lo))))
}

// next returns the subject and a freshly allocated body of call i.
func (g *generator) next(i int) (string, []byte) {
	k, r := 0, g.rng.IntN(100)
	for ; r >= mix[k].pct; k++ {
		r -= mix[k].pct
	}
	t := mix[k].typ
	if g.small {
		return subjects[k], g.nextSmall(i, t)
	}
	target := g.size()
	user := g.rng.IntN(5_000_000)

	b := make([]byte, 0, target+512)
	b = append(b, '{')
	if g.rng.IntN(2) == 0 { // half the publishers set type; the worker adds it to the rest
		b = append(b, `"type":"`...)
		b = append(b, t.String()...)
		b = append(b, `",`...)
	}
	switch n := g.rng.IntN(20); {
	case t == event.Alias:
		b = strconv.AppendInt(append(b, `"userId":"user-`...), int64(user), 10)
		b = strconv.AppendInt(append(b, `","previousId":"anon-`...), int64(g.rng.Uint32()), 16)
		b = append(b, `",`...)
	case n == 0: // a numeric id, which Customer.io accepts
		b = strconv.AppendInt(append(b, `"userId":`...), int64(user), 10)
		b = append(b, ',')
	case n <= 2:
		b = strconv.AppendInt(append(b, `"anonymousId":"anon-`...), int64(g.rng.Uint32()), 16)
		b = append(b, `",`...)
	default:
		b = strconv.AppendInt(append(b, `"userId":"user-`...), int64(user), 10)
		b = append(b, `",`...)
	}
	props := `"properties":{`
	switch t {
	case event.Track:
		b = append(append(append(b, `"event":"`...), trackEvents[g.rng.IntN(len(trackEvents))]...), `",`...)
	case event.Page:
		b = append(append(append(b, `"name":"`...), pageNames[g.rng.IntN(len(pageNames))]...), `",`...)
	case event.Screen:
		b = append(append(append(b, `"name":"`...), screenNames[g.rng.IntN(len(screenNames))]...), `",`...)
	case event.Group:
		b = strconv.AppendInt(append(b, `"groupId":"org-`...), int64(g.rng.IntN(100_000)), 10)
		b = append(b, `",`...)
		props = `"traits":{`
	case event.Identify:
		props = `"traits":{`
	}
	b = append(b, props...)
	b = strconv.AppendInt(append(b, `"orderId":"o-`...), int64(g.rng.Uint32()), 10)
	b = append(b, `","total":129.95,"currency":"EUR","city":"Zürich","title":"Tea <green> & \"honey\"","note":"`...)
	head := len(b)

	tail := make([]byte, 0, 256)
	tail = append(tail, `"}`...)
	tail = append(tail, `,"context":{"library":{"name":"analytics-go","version":"3.3.0"},"ip":"203.0.113.`...)
	tail = strconv.AppendInt(tail, int64(g.rng.IntN(255)), 10)
	tail = append(tail, `","locale":"fr-FR"},"timestamp":"`...)
	tail = g.base.Add(time.Duration(i)*time.Millisecond).AppendFormat(tail, time.RFC3339Nano)
	tail = append(tail, `","messageId":"`...)
	tail = append(tail, g.idPrefix...)
	tail = strconv.AppendInt(tail, int64(i), 10)
	tail = append(tail, `"}`...)

	if pad := target - head - len(tail); pad > 0 {
		off := g.rng.IntN(len(g.filler) - pad)
		b = append(b, g.filler[off:off+pad]...)
	}
	b = append(b, tail...)
	return subjects[k], b
}

// nextSmall returns a call of about 100 bytes: the fields its type needs, a
// messageId and nothing else.
func (g *generator) nextSmall(i int, t event.Type) []byte {
	b := make([]byte, 0, 128)
	user := g.rng.IntN(5_000_000)
	if g.hot && hotCall(i) {
		b = append(b, `{"userId":"hot"`...)
	} else {
		b = strconv.AppendInt(append(b, `{"userId":"u`...), int64(user), 10)
		b = append(b, '"')
	}
	switch t {
	case event.Track:
		b = append(append(append(b, `,"event":"`...), trackEvents[g.rng.IntN(len(trackEvents))]...), '"')
	case event.Page:
		b = append(append(append(b, `,"name":"`...), pageNames[g.rng.IntN(len(pageNames))]...), '"')
	case event.Screen:
		b = append(append(append(b, `,"name":"`...), screenNames[g.rng.IntN(len(screenNames))]...), '"')
	case event.Group:
		b = strconv.AppendInt(append(b, `,"groupId":"o`...), int64(g.rng.IntN(100_000)), 10)
		b = append(b, '"')
	case event.Alias:
		b = strconv.AppendInt(append(b, `,"previousId":"a`...), int64(g.rng.Uint32()), 16)
		b = append(b, '"')
	case event.Identify:
		b = append(b, `,"traits":{"plan":"pro"}`...)
	}
	b = append(b, `,"messageId":"`...)
	b = append(b, g.idPrefix...)
	b = strconv.AppendInt(b, int64(i), 10)
	return append(b, `"}`...)
}
