#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "core/config.hpp"
#include "core/error.hpp"
#include "plan/calibration.hpp"
#include "plan/cluster_spec.hpp"
#include "plan/preset_files.hpp"

using namespace braid;
using namespace braid::plan;

namespace {

std::string write_temp(const std::string& name, const std::string& text) {
  auto path = std::filesystem::temp_directory_path() / ("braid_plan_test_" + std::to_string(::getpid()) + "_" + name);
  std::ofstream(path) << text;
  return path.string();
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const ConfigError& e) {
    return e.describe();
  }
  return "";
}

}  // namespace

TEST(HardwareSpec, PresetsFromDatasheets) {
  auto h100 = hardware_preset("h100");
  EXPECT_DOUBLE_EQ(h100.peak_flops, 989e12);
  EXPECT_DOUBLE_EQ(h100.memory, 80.0 * (1 << 30));
  EXPECT_DOUBLE_EQ(h100.memory_bandwidth, 3.35e12);
  EXPECT_DOUBLE_EQ(h100.scale_up_bandwidth, 450e9);
  EXPECT_DOUBLE_EQ(h100.scale_out_bandwidth, 50e9);
  EXPECT_EQ(h100.scale_up_domain, 8);
  EXPECT_DOUBLE_EQ(hardware_preset("h200").memory_bandwidth, 4.8e12);
  EXPECT_DOUBLE_EQ(hardware_preset("b200").peak_flops, 2.25e15);
  EXPECT_DOUBLE_EQ(hardware_preset("b200").scale_up_bandwidth, 900e9);
  auto gb200 = hardware_preset("gb200");
  EXPECT_DOUBLE_EQ(gb200.peak_flops, 2.5e15);
  EXPECT_EQ(gb200.scale_up_domain, 72);
  for (auto& name : hardware_preset_names()) EXPECT_NO_THROW(hardware_preset(name).validate()) << name;
}

TEST(HardwareSpec, FileStartsFromAPresetAndOverrides) {
  auto path = write_temp("hw.toml", "[hardware]\npreset = \"h100\"\nname = \"h100-slow\"\nefficiency = 0.4\n"
                                    "memory = \"64 GiB\"\n");
  auto hw = load_hardware(path);
  EXPECT_EQ(hw.name, "h100-slow");
  EXPECT_DOUBLE_EQ(hw.efficiency, 0.4);
  EXPECT_DOUBLE_EQ(hw.memory, 64.0 * (1 << 30));
  EXPECT_DOUBLE_EQ(hw.peak_flops, 989e12);  // from the preset
}

TEST(HardwareSpec, BadInputIsNamed) {
  EXPECT_NE(error_of([] { hardware_preset("h900"); }).find("h100"), std::string::npos);
  auto msg = error_of([] { load_hardware(write_temp("hw_unit.toml", "[hardware]\npreset = \"h100\"\nmemory = 80\n")); });
  EXPECT_NE(msg.find("hardware.memory"), std::string::npos) << msg;
  msg = error_of([] { load_hardware(write_temp("hw_key.toml", "[hardware]\npreset = \"h100\"\nefficency = 0.5\n")); });
  EXPECT_NE(msg.find("hardware.efficency"), std::string::npos) << msg;
  EXPECT_NE(msg.find("hardware.efficiency"), std::string::npos) << msg;  // the suggestion
  msg = error_of([] { load_hardware(write_temp("hw_eff.toml", "[hardware]\npreset = \"h100\"\nefficiency = 1.5\n")); });
  EXPECT_NE(msg.find("efficiency"), std::string::npos) << msg;
}

TEST(ClusterSpec, EveryPresetLoads) {
  for (auto& name : cluster_preset_names()) {
    auto c = load_cluster(name);
    EXPECT_GT(c.gpus, 0) << name;
    EXPECT_EQ(c.gpus % c.sites, 0) << name;
  }
  for (auto& f : preset_files()) EXPECT_FALSE(f.text.empty()) << f.name;
}

// Llama 3 paper, section 3.3.1: 24K H100, 400 Gbit/s RoCE per GPU, pods of 3,072, 1:7 between pods.
TEST(ClusterSpec, MetaClusterAsPublished) {
  auto c = load_cluster("meta-h100-24k");
  EXPECT_EQ(c.gpus, 24576);
  EXPECT_EQ(c.domain_size, 8);
  EXPECT_DOUBLE_EQ(c.scale_up.bandwidth, 450e9);  // from the h100 preset
  EXPECT_DOUBLE_EQ(c.scale_out.bandwidth, 50e9);
  EXPECT_EQ(c.pod_gpus, 3072);
  EXPECT_DOUBLE_EQ(c.oversubscription, 7);
  EXPECT_EQ(c.sites, 1);
}

TEST(ClusterSpec, HardwareOverrideChangesDerivedTiers) {
  auto b200 = hardware_preset("b200");
  auto c = load_cluster("meta-h100-24k", &b200);
  EXPECT_EQ(c.hardware.name, "b200");
  EXPECT_DOUBLE_EQ(c.scale_up.bandwidth, 900e9);  // the file leaves it to the hardware
  EXPECT_DOUBLE_EQ(c.scale_out.bandwidth, 50e9);  // the file sets it
}

TEST(ClusterSpec, BadInputIsNamed) {
  EXPECT_NE(error_of([] { load_cluster("no-such-cluster"); }).find("meta-h100-24k"), std::string::npos);
  auto base = std::string("[cluster]\ngpus = 16\nhardware = \"h100\"\n");
  auto msg = error_of([&] { load_cluster(write_temp("c1.toml", base + "[scale_out]\nbandwdith = \"400 Gbit/s\"\n")); });
  EXPECT_NE(msg.find("scale_out.bandwdith"), std::string::npos) << msg;
  EXPECT_NE(msg.find("scale_out.bandwidth"), std::string::npos) << msg;
  msg = error_of([&] { load_cluster(write_temp("c2.toml", base + "[scale_out]\nbandwidth = 400.0\n")); });
  EXPECT_NE(msg.find("needs a unit"), std::string::npos) << msg;
  msg = error_of([&] { load_cluster(write_temp("c3.toml", base + "[wan]\nsites = 2\n")); });
  EXPECT_NE(msg.find("WAN bandwidth"), std::string::npos) << msg;
  msg = error_of([&] { load_cluster(write_temp("c4.toml", base + "[wan]\nsites = 3\nbandwidth = \"1 Tbit/s\"\n")); });
  EXPECT_NE(msg.find("do not split evenly"), std::string::npos) << msg;
  msg = error_of([&] { load_cluster(write_temp("c5.toml", "[cluster]\ngpus = 16\n")); });
  EXPECT_NE(msg.find("no hardware"), std::string::npos) << msg;
  msg = error_of([&] { load_cluster(write_temp("c6.toml", base + "[scale_out]\noversubscription = 0.5\n")); });
  EXPECT_NE(msg.find("oversubscription"), std::string::npos) << msg;
}

// Tiers can take their numbers from measured transports, as a calibrated file does.
TEST(ClusterSpec, TiersUseMeasuredTransports) {
  auto path = write_temp("c_transport.toml",
                         "[cluster]\ngpus = 2\nhardware = \"h100\"\n"
                         "[scale_up]\nsize = 2\ntransport = \"shm\"\n"
                         "[scale_out]\ntransport = \"tcp\"\n"
                         "[transport.shm]\nbandwidth = \"6 GB/s\"\nlatency = \"4 us\"\n"
                         "[transport.tcp]\nbandwidth = \"9.5 Gbit/s\"\nlatency = \"30 us\"\nnote = \"loopback\"\n");
  auto c = load_cluster(path);
  EXPECT_DOUBLE_EQ(c.scale_up.bandwidth, 6e9);
  EXPECT_DOUBLE_EQ(c.scale_up.latency, 4e-6);
  EXPECT_DOUBLE_EQ(c.scale_out.bandwidth, 9.5e9 / 8);
  EXPECT_DOUBLE_EQ(c.scale_out.latency, 30e-6);
  EXPECT_EQ(c.transports.at("tcp").note, "loopback");
}

// What --calibrate will write must read back as the same cluster.
TEST(ClusterSpec, WrittenFileReadsBackTheSame) {
  auto c = default_cluster(hardware_preset("h100"), 2);
  c.name = "this-host";
  c.description = "calibrated \"host\"";
  c.hardware.name = "cpu-host";
  c.hardware.peak_flops = 1.234567e12;
  c.hardware.efficiency = 0.83;
  c.hardware.memory = 24.0 * (1 << 30);
  c.domain_size = 2;
  c.scale_up = {"shm", 7.25e9, 3.5e-6};
  c.scale_out = {"tcp", 1.1e9, 42e-6};
  c.pod_gpus = 2;
  c.transports["shm"] = {7.25e9, 3.5e-6, "braid bench comm --transport shm"};
  c.transports["tcp"] = {1.1e9, 42e-6, ""};
  c.calibration.present = true;
  c.calibration.host = "box";
  c.calibration.date = "2025-01-01T00:00:00Z";
  c.calibration.tool = "braid plan --calibrate";
  c.calibration.matmul_flops = 1.5e12;
  c.calibration.matmul_dtype = "f32";
  c.calibration.matmul_size = 2048;
  auto text = cluster_to_toml(c);
  auto cfg = Config::from_string(text, "written");
  auto back = cluster_from_config(cfg);
  cfg.finish();
  auto near = [](double a, double b) { return std::fabs(a - b) <= 1e-9 * std::fabs(b); };
  EXPECT_EQ(back.name, c.name);
  EXPECT_EQ(back.description, c.description);
  EXPECT_EQ(back.gpus, 2);
  EXPECT_TRUE(near(back.hardware.peak_flops, c.hardware.peak_flops));
  EXPECT_TRUE(near(back.hardware.efficiency, 0.83));
  EXPECT_TRUE(near(back.hardware.memory, c.hardware.memory));
  EXPECT_TRUE(near(back.scale_up.bandwidth, 7.25e9));
  EXPECT_TRUE(near(back.scale_up.latency, 3.5e-6));
  EXPECT_TRUE(near(back.scale_out.bandwidth, 1.1e9));
  EXPECT_TRUE(near(back.scale_out.latency, 42e-6));
  EXPECT_EQ(back.scale_up.transport, "shm");
  EXPECT_EQ(back.transports.size(), 2u);
  EXPECT_EQ(back.transports.at("shm").note, "braid bench comm --transport shm");
  EXPECT_TRUE(back.calibration.present);
  EXPECT_EQ(back.calibration.host, "box");
  EXPECT_TRUE(near(back.calibration.matmul_flops, 1.5e12));
  EXPECT_EQ(back.calibration.matmul_size, 2048);
}

TEST(ClusterSpec, WithSitesSplitsEvenly) {
  auto c = with_sites(load_cluster("meta-h100-24k"), 2);
  EXPECT_EQ(c.sites, 2);
  EXPECT_EQ(c.gpus_per_site(), 12288);
  EXPECT_EQ(c.pod_gpus, 3072);
  EXPECT_THROW(with_sites(c, 5), ConfigError);
}

// What --calibrate will do once the measurements exist: measurements -> cluster
// -> file -> cluster, and the planner runs on it for 1 and 2 workers.
TEST(Calibration, MeasurementsBecomeAClusterFile) {
  CalibrationMeasurements m;
  m.host = "box";
  m.date = "2025-01-01T00:00:00Z";
  m.workers = 2;
  m.matmul_flops = 80e9;
  m.matmul_size = 1024;
  m.step_efficiency = 0.7;
  m.memory_bytes = 12.0 * (1 << 30);
  m.transports["shm"] = {3e9, 5e-6, "all_reduce busbw at 64 MiB"};
  m.transports["tcp"] = {1e9, 40e-6, ""};
  auto c = cluster_from_measurements(m);
  EXPECT_EQ(c.gpus, 2);
  EXPECT_DOUBLE_EQ(c.hardware.peak_flops, 80e9);
  EXPECT_DOUBLE_EQ(c.hardware.sustained_flops(), 56e9);
  EXPECT_DOUBLE_EQ(c.scale_up.bandwidth, 3e9);
  EXPECT_EQ(c.scale_out.transport, "tcp");
  auto path = write_temp("calibrated.toml", cluster_to_toml(c));
  auto back = load_cluster(path);
  EXPECT_TRUE(back.calibration.present);
  EXPECT_NEAR(back.hardware.sustained_flops(), 56e9, 1e-3);
  EXPECT_NEAR(back.scale_up.latency, 5e-6, 1e-15);
  EXPECT_EQ(back.transports.size(), 2u);
  m.transports.erase("tcp");
  EXPECT_THROW(cluster_from_measurements(m), ConfigError);
}
