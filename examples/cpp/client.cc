// A game client of tiermesh in C++ with gRPC's C++ library (what an Unreal plugin links):
// health, a dialogue streamed under a deadline, a stream the player walks away from
// (cancelled), and an intent within a game's budget.
//
//   ./client [host:port]      (default 127.0.0.1:50051; exits 1 on any failure)
//
// docs/contract.md's C++ snippets are the parts between "[START" and "[END" markers: a
// test keeps them equal.
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <iostream>
#include <memory>
#include <string>

#include "grpc/health/v1/health.grpc.pb.h"
#include "tiermesh/v1/mesh.grpc.pb.h"

namespace {

struct Answer {
  std::string text;
  tiermesh::v1::Tier tier = tiermesh::v1::TIER_UNSPECIFIED;
  tiermesh::v1::FinishReason finish = tiermesh::v1::FINISH_REASON_UNSPECIFIED;
  grpc::Status status;
};

// [START cpp-generate]
// A streamed answer with the player's patience as the deadline: the router answers in
// time (shaped to the deadline, or the NPC's canned line) instead of failing.
Answer Generate(tiermesh::v1::Mesh::Stub& mesh, const tiermesh::v1::GenerateRequest& request,
                std::chrono::milliseconds budget) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + budget);
  auto reader = mesh.Generate(&context, request);
  Answer answer;
  tiermesh::v1::GenerateResponse chunk;
  while (reader->Read(&chunk)) {
    answer.text += chunk.text();
    if (chunk.tier() != tiermesh::v1::TIER_UNSPECIFIED) answer.tier = chunk.tier();
    if (chunk.finish_reason() != tiermesh::v1::FINISH_REASON_UNSPECIFIED) answer.finish = chunk.finish_reason();
  }
  answer.status = reader->Finish();  // check answer.status.error_code()
  return answer;
}
// [END cpp-generate]

// [START cpp-cancel]
// The player walked away: cancel, and the router aborts the tier's work.
grpc::Status CancelAfterFirstToken(tiermesh::v1::Mesh::Stub& mesh, const tiermesh::v1::GenerateRequest& request) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  auto reader = mesh.Generate(&context, request);
  tiermesh::v1::GenerateResponse chunk;
  if (reader->Read(&chunk)) context.TryCancel();
  while (reader->Read(&chunk)) {
  }
  return reader->Finish();  // CANCELLED
}
// [END cpp-cancel]

int Fail(const std::string& what) {
  std::cerr << "failed: " << what << std::endl;
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string address = argc > 1 ? argv[1] : "127.0.0.1:50051";
  // [START cpp-channel]
  auto channel = grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  auto mesh = tiermesh::v1::Mesh::NewStub(channel);
  // [END cpp-channel]

  // [START cpp-health]
  auto health = grpc::health::v1::Health::NewStub(channel);
  grpc::ClientContext health_context;
  health_context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  grpc::health::v1::HealthCheckResponse serving;
  grpc::Status checked = health->Check(&health_context, grpc::health::v1::HealthCheckRequest(), &serving);
  // [END cpp-health]
  if (!checked.ok()) return Fail("health: " + checked.error_message());
  std::cout << "health: " << grpc::health::v1::HealthCheckResponse::ServingStatus_Name(serving.status())
            << std::endl;
  if (serving.status() != grpc::health::v1::HealthCheckResponse::SERVING) return Fail("not serving");

  tiermesh::v1::GenerateRequest dialogue;
  dialogue.set_npc_id("guard-1");
  dialogue.set_prompt("Halt! Who goes there?");
  dialogue.set_task(tiermesh::v1::TASK_DIALOGUE);
  dialogue.set_max_tokens(32);
  Answer answer = Generate(*mesh, dialogue, std::chrono::milliseconds(2000));
  if (!answer.status.ok()) return Fail("dialogue: " + answer.status.error_message());
  std::cout << "dialogue (2 s): " << tiermesh::v1::Tier_Name(answer.tier) << " "
            << tiermesh::v1::FinishReason_Name(answer.finish) << " \"" << answer.text << "\"" << std::endl;
  if (answer.text.empty()) return Fail("the dialogue came back empty");

  tiermesh::v1::GenerateRequest intent;
  intent.set_npc_id("guard-1");
  intent.set_prompt("The player draws a sword.");
  intent.set_task(tiermesh::v1::TASK_INTENT);
  for (const char* label : {"GREET", "WARN", "ATTACK"}) intent.add_intents(label);
  intent.set_bypass_cache(true);
  Answer label = Generate(*mesh, intent, std::chrono::milliseconds(500));
  if (!label.status.ok()) return Fail("intent: " + label.status.error_message());
  std::cout << "intent (500 ms): " << tiermesh::v1::Tier_Name(label.tier) << " " << label.text << std::endl;
  if (label.text != "GREET" && label.text != "WARN" && label.text != "ATTACK") {
    return Fail("not one of the labels: " + label.text);
  }

  grpc::Status cancelled = CancelAfterFirstToken(*mesh, dialogue);
  if (cancelled.error_code() != grpc::StatusCode::CANCELLED) {
    return Fail("cancel ended " + std::to_string(cancelled.error_code()) + ": " + cancelled.error_message());
  }
  std::cout << "cancelled: CANCELLED" << std::endl;

  tiermesh::v1::GenerateRequest unknown;
  unknown.set_npc_id("nobody");
  unknown.set_prompt("Hello?");
  unknown.set_task(tiermesh::v1::TASK_DIALOGUE);
  Answer refused = Generate(*mesh, unknown, std::chrono::milliseconds(1000));
  if (refused.status.error_code() != grpc::StatusCode::NOT_FOUND) return Fail("an unknown NPC was not NOT_FOUND");
  std::cout << "unknown npc: NOT_FOUND (" << refused.status.error_message() << ")" << std::endl;
  return 0;
}
