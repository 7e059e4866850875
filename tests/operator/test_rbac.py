"""RBAC as data: the trainer gets only pod get/patch; the operator holds what its code calls."""

from promotion_ladder.controller.rbac import (
    OPERATOR_RULES,
    TRAINER_RULES,
    TRAINER_SERVICE_ACCOUNT,
    covers,
    operator_cluster_role,
    trainer_objects,
)


def test_trainer_may_only_annotate_pods():
    assert TRAINER_RULES == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]}]


def test_operator_can_do_what_it_does():
    needed = [
        {"apiGroups": ["ladder.promotion.dev"], "resources": ["promotionladders"], "verbs": ["list", "watch"]},
        {"apiGroups": ["ladder.promotion.dev"], "resources": ["promotionladders/status"], "verbs": ["patch"]},
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["list", "watch", "create"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
        {"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["create"]},
        {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"], "verbs": ["create"]},
        *TRAINER_RULES,  # escalation prevention: it grants these
    ]
    assert covers(OPERATOR_RULES, needed) == []
    assert covers(TRAINER_RULES, [{"apiGroups": [""], "resources": ["pods"], "verbs": ["delete"]}]) == [
        "core/pods:delete"
    ]
    assert operator_cluster_role()["rules"] == OPERATOR_RULES


def test_no_wildcards_and_no_secrets():
    for rule in OPERATOR_RULES + TRAINER_RULES:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
        assert "secrets" not in rule["resources"]


def test_trainer_objects_bind_the_role_to_the_service_account():
    sa, role, binding = trainer_objects("team-a")
    assert sa["metadata"] == {**sa["metadata"], "name": TRAINER_SERVICE_ACCOUNT, "namespace": "team-a"}
    assert role["rules"] == TRAINER_RULES
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": TRAINER_SERVICE_ACCOUNT, "namespace": "team-a"}]
