#pragma once
// The failover manager's notes (Engine::send_note): a node's report and a
// coordinator's assignment, as compact JSON of at most wire::kMaxNote
// bytes. Anything a peer sends is validated: a note that does not parse,
// or breaks a limit, is refused with the reason.

#include <string>
#include <variant>

#include "baton/result.h"
#include "failover/service_group.h"

namespace baton::failover {

/// The note, or kInvalidArgument if it would not fit in one.
Result<std::string> encode_report(const NodeReport& r);
std::string encode_assignment(const Assignment& a);

using Message = std::variant<NodeReport, Assignment>;
/// Errors: kInvalidArgument with the reason.
Result<Message> decode_note(std::string_view bytes);

}  // namespace baton::failover
