// The previous InfluxDB release, built by tests/test_upgrade.py (dsmr_ts/influx/build.py) to make a
// data dir and a backup that the pinned release (dsmr_ts/influx/build/go.mod) must read.
module dsmr-ts/influxd-build-previous

go 1.25.10

require (
	github.com/BurntSushi/toml v1.2.1 // indirect
	github.com/Masterminds/semver v1.4.2 // indirect
	github.com/Masterminds/sprig v2.16.0+incompatible // indirect
	github.com/aokoli/goutils v1.0.1 // indirect
	github.com/apache/arrow/go/v7 v7.0.1 // indirect
	github.com/benbjohnson/immutable v0.4.3 // indirect
	github.com/benbjohnson/tmpl v1.0.0 // indirect
	github.com/dustin/go-humanize v1.0.1 // indirect
	github.com/editorconfig-checker/editorconfig-checker v0.0.0-20190819115812-1474bdeaf2a2 // indirect
	github.com/editorconfig/editorconfig-core-go/v2 v2.1.1 // indirect
	github.com/goccy/go-json v0.10.3 // indirect
	github.com/google/flatbuffers v24.3.25+incompatible // indirect
	github.com/google/uuid v1.6.0 // indirect
	github.com/huandu/xstrings v1.0.0 // indirect
	github.com/imdario/mergo v0.3.12 // indirect
	github.com/influxdata/flux v0.196.1 // indirect
	github.com/influxdata/influxdb/v2 v2.8.0 // indirect
	github.com/influxdata/influxql v1.2.0 // indirect
	github.com/influxdata/pkg-config v0.2.14 // indirect
	github.com/kevinburke/go-bindata v3.22.0+incompatible // indirect
	github.com/mna/pigeon v1.0.1-0.20180808201053-bb0192cfc2ae // indirect
	github.com/spf13/pflag v1.0.6 // indirect
	go.etcd.io/bbolt v1.3.6 // indirect
	go.uber.org/multierr v1.11.0 // indirect
	go.uber.org/zap v1.27.0 // indirect
	golang.org/x/crypto v0.39.0 // indirect
	golang.org/x/exp v0.0.0-20240604190554-fc45aab8b7f8 // indirect
	golang.org/x/exp/typeparams v0.0.0-20230321023759-10a507213a29 // indirect
	golang.org/x/mod v0.25.0 // indirect
	golang.org/x/sync v0.15.0 // indirect
	golang.org/x/sys v0.33.0 // indirect
	golang.org/x/tools v0.34.0 // indirect
	golang.org/x/xerrors v0.0.0-20231012003039-104605ab7028 // indirect
	google.golang.org/protobuf v1.34.1 // indirect
	gopkg.in/ini.v1 v1.51.0 // indirect
	gopkg.in/yaml.v2 v2.4.0 // indirect
	honnef.co/go/tools v0.4.6 // indirect
)
