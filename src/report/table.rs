//! The report family: every Skype for Business and Teams `*Counts` report Graph publishes with
//! the shape of getSkypeForBusinessOrganizerActivityMinuteCounts, as one row of a table.
//!
//! A report is its Graph function, its shape (daily rows, or one row per period), and its
//! metric families; a family is the columns that share a quantity (conferences, users,
//! seconds), so that summing over the family's label means something. Column spellings come
//! from shared/graph-reports.md: the documented list, its example, and real exports.

/// Daily reports carry a Report Date per row; a distribution has none: one row per period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    Daily,
    Distribution,
}

/// What a cell holds, and so how it is read and exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unit {
    /// An unsigned integer, exported as is.
    Count,
    /// An unsigned integer of minutes, exported as seconds.
    Minutes,
    /// An ISO 8601 duration (`PT1H2M3.5S`), exported as seconds.
    Duration,
}

/// One column: the spellings Graph has used for it, and its label value in the family.
#[derive(Debug)]
pub(crate) struct Column {
    /// The first spelling is the documented one and names the column in errors.
    pub(crate) names: &'static [&'static str],
    pub(crate) value: &'static str,
}

/// Columns of one quantity, under one metric family name `{stem}_{quantity}` (the window
/// total and backfill families are to be `{stem}_period_{quantity}` and
/// `{stem}_daily_{quantity}`).
#[derive(Debug)]
pub(crate) struct Family {
    pub(crate) stem: &'static str,
    pub(crate) quantity: &'static str,
    pub(crate) unit: Unit,
    /// The label that tells the columns apart; none for a family of one column.
    pub(crate) label: Option<&'static str>,
    pub(crate) columns: &'static [Column],
}

impl Family {
    /// Whether `name` is `{stem}_{quantity}`.
    pub(crate) fn is_named(&self, name: &str) -> bool {
        name.strip_prefix(self.stem)
            .and_then(|rest| rest.strip_prefix('_'))
            == Some(self.quantity)
    }
}

/// One report: a row of [`REPORTS`].
#[derive(Debug)]
pub(crate) struct ReportKind {
    pub(crate) function: &'static str,
    pub(crate) shape: Shape,
    pub(crate) families: &'static [Family],
}

const fn col(names: &'static [&'static str], value: &'static str) -> Column {
    Column { names, value }
}

const SFB_CONFERENCE_COUNTS: [Column; 6] = [
    col(&["IM"], "im"),
    col(&["Audio/Video"], "audio_video"),
    col(&["App Sharing"], "app_sharing"),
    col(&["Web"], "web"),
    col(
        &["Dial-in/out 3rd Party", "Dial-in/out third Party"],
        "dial_in_out_3rd_party",
    ),
    col(&["Dial-in/out Microsoft"], "dial_in_out_microsoft"),
];
const SFB_PARTICIPANT_COUNTS: [Column; 5] = [
    col(&["IM"], "im"),
    col(&["Audio/Video"], "audio_video"),
    col(&["App Sharing"], "app_sharing"),
    col(&["Web"], "web"),
    col(
        &["Dial-in/out 3rd Party", "Dial-in/out third Party"],
        "dial_in_out_3rd_party",
    ),
];
const SFB_ACTIVITIES: [Column; 3] = [
    col(&["Peer-to-peer"], "peer_to_peer"),
    col(&["Organized"], "organized"),
    col(&["Participated"], "participated"),
];
const SFB_P2P_SESSIONS: [Column; 5] = [
    col(&["IM"], "im"),
    col(&["Audio"], "audio"),
    col(&["Video"], "video"),
    col(&["App Sharing"], "app_sharing"),
    col(&["File Transfer"], "file_transfer"),
];
const SFB_DEVICES: [Column; 5] = [
    col(&["Windows"], "windows"),
    col(&["Windows Phone"], "windows_phone"),
    col(&["Android Phone"], "android_phone"),
    col(&["iPhone"], "iphone"),
    col(&["iPad"], "ipad"),
];
const TEAMS_DEVICES: [Column; 8] = [
    col(&["Web"], "web"),
    col(&["Windows Phone"], "windows_phone"),
    col(&["Android Phone"], "android_phone"),
    col(&["iOS"], "ios"),
    col(&["Mac"], "mac"),
    col(&["Windows"], "windows"),
    col(&["Chrome OS"], "chrome_os"),
    col(&["Linux"], "linux"),
];

const fn family(
    stem: &'static str,
    quantity: &'static str,
    unit: Unit,
    label: Option<&'static str>,
    columns: &'static [Column],
) -> Family {
    Family {
        stem,
        quantity,
        unit,
        label,
        columns,
    }
}

use Shape::{Daily, Distribution};
use Unit::{Count, Duration, Minutes};

/// Every report, Skype for Business first, in Graph's order of the reports' pages.
pub(crate) static REPORTS: [ReportKind; 19] = [
    ReportKind {
        function: "getSkypeForBusinessActivityCounts",
        shape: Daily,
        families: &[family(
            "sfb_activity",
            "sessions",
            Count,
            Some("activity"),
            &SFB_ACTIVITIES,
        )],
    },
    ReportKind {
        function: "getSkypeForBusinessActivityUserCounts",
        shape: Daily,
        families: &[family(
            "sfb_activity",
            "users",
            Count,
            Some("activity"),
            &SFB_ACTIVITIES,
        )],
    },
    ReportKind {
        function: "getSkypeForBusinessOrganizerActivityCounts",
        shape: Daily,
        families: &[family(
            "sfb_organizer_activity",
            "conferences",
            Count,
            Some("conference_type"),
            &SFB_CONFERENCE_COUNTS,
        )],
    },
    ReportKind {
        function: "getSkypeForBusinessOrganizerActivityUserCounts",
        shape: Daily,
        families: &[family(
            "sfb_organizer_activity",
            "users",
            Count,
            Some("conference_type"),
            &SFB_CONFERENCE_COUNTS,
        )],
    },
    ReportKind {
        function: "getSkypeForBusinessOrganizerActivityMinuteCounts",
        shape: Daily,
        families: &[family(
            "sfb_organizer_activity",
            "seconds",
            Minutes,
            Some("conference_type"),
            &[
                col(&["Audio/Video"], "audio_video"),
                col(&["Dial-in Microsoft"], "dial_in_microsoft"),
                col(&["Dial-out Microsoft"], "dial_out_microsoft"),
            ],
        )],
    },
    ReportKind {
        function: "getSkypeForBusinessParticipantActivityCounts",
        shape: Daily,
        families: &[family(
            "sfb_participant_activity",
            "conferences",
            Count,
            Some("conference_type"),
            &SFB_PARTICIPANT_COUNTS,
        )],
    },
    ReportKind {
        function: "getSkypeForBusinessParticipantActivityUserCounts",
        shape: Daily,
        families: &[family(
            "sfb_participant_activity",
            "users",
            Count,
            Some("conference_type"),
            &SFB_PARTICIPANT_COUNTS,
        )],
    },
    ReportKind {
        function: "getSkypeForBusinessParticipantActivityMinuteCounts",
        shape: Daily,
        families: &[family(
            "sfb_participant_activity",
            "seconds",
            Minutes,
            Some("conference_type"),
            &[col(&["Audio/Video"], "audio_video")],
        )],
    },
    ReportKind {
        function: "getSkypeForBusinessPeerToPeerActivityCounts",
        shape: Daily,
        families: &[family(
            "sfb_peer_to_peer_activity",
            "sessions",
            Count,
            Some("session_type"),
            &SFB_P2P_SESSIONS,
        )],
    },
    ReportKind {
        function: "getSkypeForBusinessPeerToPeerActivityUserCounts",
        shape: Daily,
        families: &[family(
            "sfb_peer_to_peer_activity",
            "users",
            Count,
            Some("session_type"),
            &SFB_P2P_SESSIONS,
        )],
    },
    ReportKind {
        function: "getSkypeForBusinessPeerToPeerActivityMinuteCounts",
        shape: Daily,
        families: &[family(
            "sfb_peer_to_peer_activity",
            "seconds",
            Minutes,
            Some("session_type"),
            &[col(&["Audio"], "audio"), col(&["Video"], "video")],
        )],
    },
    ReportKind {
        function: "getSkypeForBusinessDeviceUsageUserCounts",
        shape: Daily,
        families: &[family(
            "sfb_device_usage",
            "users",
            Count,
            Some("device"),
            &SFB_DEVICES,
        )],
    },
    ReportKind {
        function: "getSkypeForBusinessDeviceUsageDistributionUserCounts",
        shape: Distribution,
        families: &[family(
            "sfb_device_usage_distribution",
            "users",
            Count,
            Some("device"),
            &SFB_DEVICES,
        )],
    },
    ReportKind {
        function: "getTeamsUserActivityCounts",
        shape: Daily,
        families: &[
            family(
                "teams_user_activity",
                "messages",
                Count,
                Some("message_type"),
                &[
                    col(&["Team Chat Messages"], "team_chat"),
                    col(&["Post Messages"], "post"),
                    col(&["Reply Messages"], "reply"),
                    col(&["Private Chat Messages"], "private_chat"),
                ],
            ),
            family(
                "teams_user_activity",
                "calls",
                Count,
                None,
                &[col(&["Calls"], "calls")],
            ),
            family(
                "teams_user_activity",
                "meetings",
                Count,
                None,
                &[col(&["Meetings"], "meetings")],
            ),
            family(
                "teams_user_activity",
                "meeting_participations",
                Count,
                Some("role"),
                &[
                    col(
                        &["Meetings Organized", "Meetings Organized Count"],
                        "organizer",
                    ),
                    col(
                        &["Meetings Attended", "Meetings Attended Count"],
                        "attendee",
                    ),
                ],
            ),
            family(
                "teams_user_activity",
                "duration_seconds",
                Duration,
                Some("media"),
                &[
                    col(&["Audio Duration"], "audio"),
                    col(&["Video Duration"], "video"),
                    col(&["Screen Share Duration"], "screen_share"),
                ],
            ),
        ],
    },
    ReportKind {
        function: "getTeamsUserActivityUserCounts",
        shape: Daily,
        families: &[family(
            "teams_user_activity",
            "users",
            Count,
            Some("activity"),
            &[
                col(&["Team Chat Messages"], "team_chat_messages"),
                col(&["Private Chat Messages"], "private_chat_messages"),
                col(&["Calls"], "calls"),
                col(&["Meetings"], "meetings"),
                col(&["Other Actions"], "other_actions"),
            ],
        )],
    },
    ReportKind {
        function: "getTeamsDeviceUsageUserCounts",
        shape: Daily,
        families: &[family(
            "teams_device_usage",
            "users",
            Count,
            Some("device"),
            &TEAMS_DEVICES,
        )],
    },
    ReportKind {
        function: "getTeamsDeviceUsageDistributionUserCounts",
        shape: Distribution,
        families: &[family(
            "teams_device_usage_distribution",
            "users",
            Count,
            Some("device"),
            &TEAMS_DEVICES,
        )],
    },
    ReportKind {
        function: "getTeamsTeamActivityCounts",
        shape: Daily,
        families: &[
            family(
                "teams_team_activity",
                "users",
                Count,
                Some("user_type"),
                &[
                    col(&["Active Users"], "active"),
                    col(&["Guests"], "guest"),
                    col(&["Active External Users"], "active_external"),
                ],
            ),
            family(
                "teams_team_activity",
                "channels",
                Count,
                Some("channel_type"),
                &[
                    col(&["Active Channels"], "active"),
                    col(&["Active Shared Channels"], "active_shared"),
                ],
            ),
            family(
                "teams_team_activity",
                "messages",
                Count,
                Some("message_type"),
                &[
                    col(&["Post Messages"], "post"),
                    col(&["Reply Messages"], "reply"),
                    col(&["Channel Messages"], "channel"),
                    col(&["Urgent Messages"], "urgent"),
                ],
            ),
            family(
                "teams_team_activity",
                "reactions",
                Count,
                None,
                &[col(&["Reactions"], "reactions")],
            ),
            family(
                "teams_team_activity",
                "mentions",
                Count,
                None,
                &[col(&["Mentions"], "mentions")],
            ),
            family(
                "teams_team_activity",
                "meetings",
                Count,
                None,
                &[col(&["Meetings Organized"], "organized")],
            ),
        ],
    },
    ReportKind {
        function: "getTeamsTeamCounts",
        shape: Daily,
        families: &[
            family(
                "teams_team",
                "teams",
                Count,
                Some("visibility"),
                &[
                    col(&["Public Teams"], "public"),
                    col(&["Private Teams"], "private"),
                ],
            ),
            family(
                "teams_team",
                "active_teams",
                Count,
                Some("visibility"),
                &[
                    col(&["Active Public Teams"], "public"),
                    col(&["Active Private Teams"], "private"),
                ],
            ),
        ],
    },
];

/// The report this exporter has always read, and the one [`super::parse`] reads.
pub(crate) static ORGANIZER_ACTIVITY_MINUTE_COUNTS: &ReportKind = &REPORTS[4];

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn prometheus_name(name: &str) -> bool {
        !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            && !name.starts_with('_')
            && !name.ends_with('_')
            && !name.contains("__")
    }

    #[test]
    fn every_report_has_its_own_function() {
        let functions: BTreeSet<_> = REPORTS.iter().map(|r| r.function).collect();
        assert_eq!(functions.len(), REPORTS.len());
        assert_eq!(
            ORGANIZER_ACTIVITY_MINUTE_COUNTS.function,
            "getSkypeForBusinessOrganizerActivityMinuteCounts"
        );
    }

    #[test]
    fn family_names_are_unique_across_the_table_in_every_form() {
        let mut seen = BTreeSet::new();
        for report in &REPORTS {
            for f in report.families {
                for name in [
                    format!("{}_{}", f.stem, f.quantity),
                    format!("{}_period_{}", f.stem, f.quantity),
                    format!("{}_daily_{}", f.stem, f.quantity),
                ] {
                    assert!(seen.insert(name.clone()), "{name} twice");
                }
            }
        }
    }

    #[test]
    fn names_follow_prometheus_conventions() {
        let units_and_nouns_ok = |quantity: &str| quantity == "seconds" || quantity.ends_with('s');
        for report in &REPORTS {
            let prefix = if report.function.starts_with("getSkypeForBusiness") {
                "sfb_"
            } else {
                assert!(
                    report.function.starts_with("getTeams"),
                    "{}",
                    report.function
                );
                "teams_"
            };
            for f in report.families {
                let name = format!("{}_{}", f.stem, f.quantity);
                assert!(prometheus_name(&name), "{name}");
                assert!(f.stem.starts_with(prefix), "{name} of {}", report.function);
                assert!(units_and_nouns_ok(f.quantity), "{name}");
                assert!(
                    !name.ends_with("_total") && !name.ends_with("_count"),
                    "{name}"
                );
                assert!(
                    !name.contains("minutes"),
                    "{name}: seconds are the base unit"
                );
                // Time is in seconds, whatever Graph's unit; nothing else is.
                assert_eq!(
                    f.unit != Unit::Count,
                    f.quantity.ends_with("seconds"),
                    "{name}"
                );
                if let Some(label) = f.label {
                    assert!(prometheus_name(label), "{name}: label {label}");
                    assert_ne!(label, "type", "{name}: avoid the label name type");
                }
            }
        }
    }

    #[test]
    fn label_values_are_unique_within_a_family_and_a_family_of_several_has_a_label() {
        for report in &REPORTS {
            for f in report.families {
                let values: BTreeSet<_> = f.columns.iter().map(|c| c.value).collect();
                assert_eq!(values.len(), f.columns.len(), "{}_{}", f.stem, f.quantity);
                let plain = |v: &str| {
                    v.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                };
                assert!(values.iter().all(|v| plain(v)), "{values:?}");
                assert!(!f.columns.is_empty());
                // One column may keep a label, like its sibling families (a participant's
                // Audio/Video seconds are a conference_type, as an organizer's are).
                assert!(f.label.is_some() || f.columns.len() == 1, "{}", f.stem);
            }
        }
    }

    #[test]
    fn no_spelling_is_shared_by_two_columns_of_one_report() {
        for report in &REPORTS {
            let mut seen = BTreeSet::new();
            for spelling in ["Report Refresh Date", "Report Date", "Report Period"] {
                seen.insert(spelling.to_ascii_lowercase());
            }
            for f in report.families {
                for c in f.columns {
                    assert!(!c.names.is_empty());
                    for name in c.names {
                        assert_eq!(name.trim(), *name);
                        assert!(
                            seen.insert(name.to_ascii_lowercase()),
                            "{name:?} twice in {}",
                            report.function
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn todays_report_keeps_its_family_and_label() {
        let [family] = ORGANIZER_ACTIVITY_MINUTE_COUNTS.families else {
            panic!("one family");
        };
        assert!(family.is_named("sfb_organizer_activity_seconds"));
        assert!(!family.is_named("sfb_organizer_activity"));
        assert_eq!(family.label, Some("conference_type"));
        assert_eq!(family.unit, Unit::Minutes);
        let columns: Vec<_> = family
            .columns
            .iter()
            .map(|c| (c.names[0], c.value))
            .collect();
        assert_eq!(
            columns,
            [
                ("Audio/Video", "audio_video"),
                ("Dial-in Microsoft", "dial_in_microsoft"),
                ("Dial-out Microsoft", "dial_out_microsoft"),
            ]
        );
    }
}
