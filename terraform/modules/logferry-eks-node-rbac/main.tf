# The Kubernetes side of the node daemon's `kubernetes_metadata = "api"`: the daemon lists and
# watches the pods of its own node (fieldSelector spec.nodeName) and, with `namespace_labels`,
# the namespaces, to add labels, annotations, uid and image to the records. Read-only and
# nothing more: get/list/watch on pods (and namespaces), bound to the daemon's service account.
# The same rules as eks/daemonset/rbac.yaml (a deploy test keeps them equal).

locals {
  labels = {
    "app.kubernetes.io/name"       = var.name
    "app.kubernetes.io/component"  = "node-log-router"
    "app.kubernetes.io/managed-by" = "terraform"
  }
  resources = var.namespace_labels ? ["pods", "namespaces"] : ["pods"]
}

resource "kubernetes_cluster_role_v1" "node" {
  metadata {
    name   = var.name
    labels = local.labels
  }

  rule {
    api_groups = [""]
    resources  = local.resources
    verbs      = ["get", "list", "watch"]
  }
}

resource "kubernetes_cluster_role_binding_v1" "node" {
  metadata {
    name   = var.name
    labels = local.labels
  }

  role_ref {
    api_group = "rbac.authorization.k8s.io"
    kind      = "ClusterRole"
    name      = kubernetes_cluster_role_v1.node.metadata[0].name
  }

  subject {
    kind      = "ServiceAccount"
    name      = var.service_account
    namespace = var.namespace
  }
}
