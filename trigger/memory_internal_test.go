package trigger

import (
	"bytes"
	"testing"
	"unsafe"
)

// TestParseKeepsOneCopyOfTheList: a trigger's list entries point into its
// Body instead of holding copies, whatever the spacing and escapes of the
// body it was parsed from.
func TestParseKeepsOneCopyOfTheList(t *testing.T) {
	for _, body := range []string{
		`{"broadcast_id":1,"ids":["a",2,"c"],"id_ignore_missing":true}`,
		`{ "data" : {"x": [1, 2]}, "broadcast_id" : 1, "emails" : [ "A@x.io" , "b\u0040x.io" ] }`,
		`{"broadcast_id":1,"per_user_data":[ {"id":"u","data":{"k":"<&>"}}, {"email":"e@x.io"} ],"email_ignore_missing":true}`,
		`{"\u0069ds":["a"],"broadcast_id":1}`,
	} {
		r, err := Parse([]byte(body))
		if err != nil {
			t.Fatal(err)
		}
		if !r.listInBody {
			t.Errorf("%s: list entries are copies", body)
		}
		lo := uintptr(unsafe.Pointer(unsafe.SliceData(r.body)))
		hi := lo + uintptr(len(r.body))
		for _, e := range r.entries {
			at := uintptr(unsafe.Pointer(unsafe.SliceData(e.raw)))
			if at < lo || at+uintptr(len(e.raw)) > hi || cap(e.raw) != len(e.raw) || !bytes.Contains(r.body, e.raw) {
				t.Errorf("%s: entry %s is not a bounded slice of the body %s", body, e.raw, r.body)
			}
		}
	}
}
