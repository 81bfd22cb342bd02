#pragma once
// What `braid plan` prints: a plain-text report (the default) or JSON.
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "plan/cross_site.hpp"
#include "plan/plan_search.hpp"
#include "plan/step_model.hpp"

namespace braid::plan {

std::string format_report(const StepEstimate& e, const std::optional<TokenBudget>& budget,
                          const std::optional<CrossSiteAnalysis>& cross_site);
nlohmann::json report_json(const StepEstimate& e, const std::optional<TokenBudget>& budget,
                           const std::optional<CrossSiteAnalysis>& cross_site);

std::string format_search(const SearchResult& r, const ModelSpec& model, const ClusterSpec& cluster);
nlohmann::json search_json(const SearchResult& r);

// Plain-text table with aligned columns; `right[i]` right-aligns column i.
std::string format_table(const std::vector<std::vector<std::string>>& rows,
                         const std::vector<bool>& right, const std::string& indent = "  ");

}  // namespace braid::plan
