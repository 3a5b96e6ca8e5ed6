# The IAM role for the EKS manifests in eks/irsa/: the pods' service account assumes it through
# the cluster's OIDC provider (IRSA), and it holds exactly the router's permissions for the
# ConfigMap's s3 sink (key prefix logs/{kubernetes.namespace_name}/...). No IMDS needed.

data "aws_eks_cluster" "this" {
  name = var.cluster_name
}

data "aws_iam_openid_connect_provider" "cluster" {
  url = data.aws_eks_cluster.this.identity[0].oidc[0].issuer
}

locals {
  issuer = replace(data.aws_eks_cluster.this.identity[0].oidc[0].issuer, "https://", "")
}

module "destinations" {
  source = "../../modules/logferry-destinations"

  name_prefix      = var.name
  bucket_name      = var.bucket_name
  create_log_group = false
}

module "iam" {
  source = "../../modules/logferry-iam"

  region        = var.region
  s3_bucket     = module.destinations.bucket_name
  s3_key_prefix = "logs/{kubernetes.namespace_name}/%Y/%m/%d/%H/"
}

data "aws_iam_policy_document" "irsa_trust" {
  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = [data.aws_iam_openid_connect_provider.cluster.arn]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.issuer}:sub"
      values   = ["system:serviceaccount:${var.namespace}:${var.service_account}"]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.issuer}:aud"
      values   = ["sts.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "router" {
  name               = "${var.name}-router"
  assume_role_policy = data.aws_iam_policy_document.irsa_trust.json
}

resource "aws_iam_role_policy" "router" {
  name   = "logferry"
  role   = aws_iam_role.router.id
  policy = module.iam.json
}
