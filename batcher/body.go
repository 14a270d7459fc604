package batcher

// The batch envelope, {"batch":[c1,c2,…]}, is written only in this package:
// by Packer as it fills a batch, and by the functions below for a part of
// one sent on its own (a half when a refused batch is bisected, the calls of
// a batch left once some are held back, an ordered lane's batch). They take
// the calls' items and a function giving each item's wire bytes, so a caller
// keeps its own item type and builds no slice of calls to get a body.
//
// Unlike Packer they check no limit: parts of a batch that fit, fit.

// BodyOf returns the batch body of items' calls, in order, in a new slice of
// exactly its size. call returns an item's wire bytes.
func BodyOf[T any](items []T, call func(T) []byte) []byte {
	return AppendBodyOf(make([]byte, 0, BodySizeOf(items, call)), items, call)
}

// AppendBodyOf appends the batch body of items' calls to dst and returns the
// extended slice, for a caller that recycles its buffers.
func AppendBodyOf[T any](dst []byte, items []T, call func(T) []byte) []byte {
	dst = append(dst, bodyPrefix...)
	for i, it := range items {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, call(it)...)
	}
	return append(dst, bodySuffix...)
}

// BodySizeOf returns len(BodyOf(items, call)) without building the body.
func BodySizeOf[T any](items []T, call func(T) []byte) int {
	n := Overhead
	for i, it := range items {
		if i > 0 {
			n++ // the comma
		}
		n += len(call(it))
	}
	return n
}

// Halves splits items in two, the first half smaller by one when their
// number is odd, and returns each half with its body: the bisection that
// finds the call Customer.io refuses in a refused batch. The halves share
// items' backing array.
func Halves[T any](items []T, call func(T) []byte) (first, second []T, firstBody, secondBody []byte) {
	half := len(items) / 2
	first, second = items[:half], items[half:]
	return first, second, BodyOf(first, call), BodyOf(second, call)
}
