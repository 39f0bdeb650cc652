module github.com/sooserve/sooserve

go 1.26
