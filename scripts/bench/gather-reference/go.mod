module rigging.dev/bench/gather-reference

go 1.22
