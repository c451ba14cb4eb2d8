package contract

import "strings"

// Topic kinds: the last level of a station's topics (DESIGN §3.2).
const (
	KindStatus    = "status"    // out, QoS 1, retained: Status or Offline
	KindEvents    = "events"    // out, QoS 1: one Record
	KindTelemetry = "telemetry" // out, QoS 0 or 1: Telemetry
	KindCmd       = "cmd"       // in, QoS 1: a command (Command or Signed)
	KindResp      = "resp"      // out, QoS 1: Response
)

// FleetLevel is the topic level that stands where a station id would for commands to every
// station: {prefix}/_fleet/cmd. No station id can take it (ids start with a letter or digit).
const FleetLevel = "_fleet"

// FleetTarget is the command target that addresses every station.
const FleetTarget = "*"

// DefaultTopicPrefix is the prefix of every topic unless configured otherwise.
const DefaultTopicPrefix = "stations"

// Topics are one station's topics.
type Topics struct {
	Status, Events, Telemetry, Cmd, Resp string
	// FleetCmd is where commands for every station arrive.
	FleetCmd string
}

// TopicsFor returns the topics of station id under prefix.
func TopicsFor(prefix, id string) Topics {
	return Topics{
		Status:    Topic(prefix, id, KindStatus),
		Events:    Topic(prefix, id, KindEvents),
		Telemetry: Topic(prefix, id, KindTelemetry),
		Cmd:       Topic(prefix, id, KindCmd),
		Resp:      Topic(prefix, id, KindResp),
		FleetCmd:  Topic(prefix, FleetLevel, KindCmd),
	}
}

// Topic returns {prefix}/{station}/{kind}. station may be a station id, FleetLevel, or the MQTT
// wildcard "+" to make a subscription filter for every station.
func Topic(prefix, station, kind string) string {
	return prefix + "/" + station + "/" + kind
}

// CommandTopic returns the topic a command for target (a station id or FleetTarget) is sent on.
func CommandTopic(prefix, target string) string {
	if target == FleetTarget {
		return Topic(prefix, FleetLevel, KindCmd)
	}
	return Topic(prefix, target, KindCmd)
}

// StationOf returns the station id of a topic {prefix}/{id}/{kind}, or "" when the topic is not
// of that form.
func StationOf(prefix, kind, topic string) string {
	rest, ok := strings.CutPrefix(topic, prefix+"/")
	if !ok {
		return ""
	}
	id, ok := strings.CutSuffix(rest, "/"+kind)
	if !ok || !ValidStationID(id) {
		return ""
	}
	return id
}

// StationIDSyntax describes a valid station id, for error messages.
const StationIDSyntax = "[a-z0-9][a-z0-9._-]{0,63}"

// ValidStationID reports whether id is a station id (StationIDSyntax). A station id is also the
// station's MQTT client id and one topic level.
func ValidStationID(id string) bool {
	if len(id) < 1 || len(id) > 64 || !isLowerOrDigit(id[0]) {
		return false
	}
	for i := 1; i < len(id); i++ {
		if c := id[i]; !isLowerOrDigit(c) && c != '.' && c != '_' && c != '-' {
			return false
		}
	}
	return true
}

func isLowerOrDigit(c byte) bool { return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' }

// TopicPrefixSyntax describes a valid topic prefix, for error messages.
const TopicPrefixSyntax = "letters, digits, . _ - and / between levels only"

// ValidTopicPrefix reports whether p is a usable topic prefix: one or more levels of letters,
// digits, '.', '_' and '-', with no wildcard and no empty level.
func ValidTopicPrefix(p string) bool {
	for _, level := range strings.Split(p, "/") {
		if level == "" {
			return false
		}
		for i := 0; i < len(level); i++ {
			c := level[i]
			if !isLowerOrDigit(c) && !(c >= 'A' && c <= 'Z') && c != '.' && c != '_' && c != '-' {
				return false
			}
		}
	}
	return true
}
